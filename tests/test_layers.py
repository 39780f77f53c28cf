"""Package layers: every import of ours (module level, inside functions, under TYPE_CHECKING) follows the
arrows of docs/architecture.md, and the executor's network half imports no torch.

Imports are read with `ast`, not by importing, so a function-level import cannot hide an arrow.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import sparkv

PACKAGE_ROOT = Path(sparkv.__file__).resolve().parent

# A module's layer: the longest prefix of its dotted name found here.
LAYERS = {
    "sparkv": "root",
    "sparkv.core": "core",
    "sparkv.policies": "policies",
    "sparkv.traces": "traces",
    "sparkv.cost_models": "cost_models",
    "sparkv.engine": "engine",
    "sparkv.profiling": "profiling",
    "sparkv.sim": "sim",
    "sparkv.executor": "executor",
    "sparkv.executor.net": "executor.net",
    "sparkv.analysis": "analysis",
    "sparkv.api": "api",
    "sparkv.commands": "commands",
    "sparkv.cli": "cli",
}
_BASE = {"core", "policies", "traces", "cost_models"}
_WORLDS = {"engine", "profiling", "sim", "executor", "executor.net"}
# layer -> the other layers it may import (a layer may always import itself).
ALLOWED: dict[str, set[str]] = {
    "root": set(),  # sparkv/__init__.py: the version string only; every layer may import it
    "core": set(),
    "policies": {"core"},
    "traces": {"core"},
    "cost_models": {"core"},
    "engine": {"core", "policies", "traces", "cost_models"},
    "profiling": {"core", "engine", "policies", "traces", "cost_models", "executor", "executor.net"},
    "sim": {"core", "engine", "policies", "traces", "cost_models"},
    "executor": {"core", "engine", "policies", "traces", "cost_models", "executor.net"},
    "executor.net": {"core", "traces"},
    "analysis": _BASE | _WORLDS,
    "api": _BASE | _WORLDS | {"analysis"},
    "commands": _BASE | _WORLDS | {"analysis", "api"},
    "cli": _BASE | _WORLDS | {"analysis", "api", "commands"},
}
# Single modules a layer may import beyond its table, and why.
EXTRA: dict[str, set[str]] = {
    # The wire encodes cells with the KV codecs (numpy and zstandard, importing only `core`); the codecs
    # live with the cost models because their measured ratios and speeds are cost-model inputs.
    "executor.net": {"sparkv.cost_models.codecs"},
    # `sparkv.simulate` and the other API names: sparkv/__init__.py's module __getattr__ imports the API on
    # first use of one of them only, so `import sparkv` (and every layer's import of the version) stays light.
    "root": {"sparkv.api"},
}
# Layers that must not import these packages at all (the policy contract: no clock, no world).
FORBIDDEN_THIRD_PARTY = {
    "core": {"torch", "transformers", "simpy"},
    "policies": {"torch", "transformers", "simpy"},
    "executor.net": {"torch", "transformers"},
}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the dotted name imported
    line: int


def layer_of(name: str) -> str | None:
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        layer = LAYERS.get(".".join(parts[:n]))
        if layer is not None:
            return layer
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> list[Path]:
    return sorted(PACKAGE_ROOT.rglob("*.py"))


def imports_of(path: Path) -> list[Import]:
    """Every import statement anywhere in the file."""
    return imports_in(path.read_text(), module_name(path), path.name == "__init__.py")


def imports_in(source: str, mod: str, is_package: bool) -> list[Import]:
    """Every import statement anywhere in `source` (module `mod`), relative ones resolved."""
    package = mod if is_package else mod.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [Import(mod, alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from sparkv.x import y` may name a submodule y: check the deeper name too.
            out.append(Import(mod, target, node.lineno))
            out += [Import(mod, f"{target}.{a.name}", node.lineno) for a in node.names if a.name != "*"]
    return out


def violations(imports: list[Import]) -> list[str]:
    """One line per import statement that breaks the table (the first name it breaks with)."""
    bad: dict[tuple[str, int], str] = {}
    for imp in imports:
        if (imp.module, imp.line) in bad:
            continue
        src = layer_of(imp.module)
        assert src is not None, f"{imp.module} is in no layer: add its package to LAYERS"
        top = imp.target.split(".")[0]
        if top in FORBIDDEN_THIRD_PARTY.get(src, set()):
            bad[imp.module, imp.line] = f"{imp.module}:{imp.line} imports {imp.target} ({src} must not)"
        if top != "sparkv":
            continue
        dst = layer_of(imp.target)
        if dst is None or dst == src or dst in ALLOWED[src]:
            continue
        if dst == "root":
            continue  # `sparkv` itself holds the version string only (and imports nothing, see ALLOWED)
        if any(imp.target == e or imp.target.startswith(e + ".") for e in EXTRA.get(src, set())):
            continue
        if any(e.startswith(imp.target + ".") for e in EXTRA.get(src, set())):
            continue  # the parent package of an allowed module (`from sparkv.cost_models import codecs`)
        bad[imp.module, imp.line] = f"{imp.module}:{imp.line} imports {imp.target} ({src} -> {dst} is not allowed)"
    return list(bad.values())


def test_every_module_is_in_a_layer() -> None:
    missing = [module_name(p) for p in all_modules() if layer_of(module_name(p)) is None]
    assert not missing


def test_imports_follow_the_arrows() -> None:
    bad = [v for p in all_modules() for v in violations(imports_of(p))]
    assert not bad, "imports against the layer arrows:\n" + "\n".join(bad)


def import_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges.get(w, set())))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    cycles.append(sorted(comp))
    return cycles


def module_edges() -> dict[str, set[str]]:
    """module -> our modules it imports anywhere; a module's own ancestor packages are left out (Python
    imports them first whatever the module says, so `from sparkv.traces import synthetic` is no cycle)."""
    paths = all_modules()
    names = {module_name(p) for p in paths}
    edges: dict[str, set[str]] = {}
    for p in paths:
        mod = module_name(p)
        targets = {i.target for i in imports_of(p)} & names
        edges[mod] = {t for t in targets if t != mod and not mod.startswith(t + ".")}
    return edges


def test_no_import_cycles() -> None:
    """No two modules import each other, directly or around a loop, even from inside functions."""
    assert not import_cycles(module_edges())


def test_a_cycle_is_caught() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_cycles(edges) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize(
    ("module", "target"),
    [
        ("sparkv.cost_models.fit", "sparkv.executor.model.prefill"),
        ("sparkv.core.model", "sparkv.traces"),
        ("sparkv.executor.session", "sparkv.sim.engine"),
        ("sparkv.executor.session", "sparkv.profiling.profiler"),
        ("sparkv.executor.net.client", "sparkv.executor.model.kvstore"),
        ("sparkv.executor.net.client", "sparkv.cost_models.profiles"),
        ("sparkv.sim.engine", "sparkv.analysis.sweep"),
        ("sparkv.analysis.sweep", "sparkv.commands.common"),
        ("sparkv.policies.oracle", "torch"),
    ],
)
def test_a_broken_arrow_is_caught(module: str, target: str) -> None:
    assert violations([Import(module, target, 1)])


def test_imports_in_functions_type_checking_and_relative_forms_are_seen() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from sparkv.sim.engine import simulate\n"
        "def f():\n    from ..executor.model import prefill\n"
        "class C:\n    def g(self):\n        import sparkv.analysis.sweep\n"
    )
    found = {i.target for i in imports_in(source, "sparkv.cost_models.fit", is_package=False)}
    assert {"sparkv.sim.engine", "sparkv.executor.model.prefill", "sparkv.analysis.sweep"} <= found
    assert len(violations(imports_in(source, "sparkv.cost_models.fit", is_package=False))) >= 3


def _net_modules() -> list[str]:
    return sorted(module_name(p) for p in (PACKAGE_ROOT / "executor" / "net").rglob("*.py"))


def test_the_network_half_imports_no_torch() -> None:
    """In a fresh interpreter: import every `sparkv.executor.net` module and look up every wire codec."""
    mods = _net_modules()
    assert "sparkv.executor.net.server" in mods and "sparkv.executor.net.client" in mods
    code = (
        "import importlib, sys\n"
        "import sparkv\n"
        f"assert sparkv.__file__ == {str(PACKAGE_ROOT / '__init__.py')!r}, sparkv.__file__\n"
        f"for m in {mods!r}: importlib.import_module(m)\n"
        "from sparkv.executor.net.codecs import get_codec\n"
        "get_codec('raw'); get_codec('fp16'); get_codec('int8'); get_codec('int4-rot+zstd')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers'}))\n"
    )
    # The same checkout as this test's, whatever the installed package is.
    path = os.pathsep.join([str(PACKAGE_ROOT.parent), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    cmd = [sys.executable, "-c", code]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"the network half imported {out.stdout.strip()}"
