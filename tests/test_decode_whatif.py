"""`sparkv decode --whatif-table`: every cell agrees with its policy's own simulated run and the profiles' power,
full-kv is refused when the KV exceeds the budget, accuracy comes from quality files, and the files carry the
configuration."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from sparkv.analysis.decode_whatif_table import NEEDS_WHOLE_KV, OK, OVER_BUDGET, attach_accuracy, load_quality
from sparkv.cli import main
from sparkv.commands.decode_hillinfer import build_policy, sim_options
from sparkv.commands.decode_whatif import simulate_cells
from sparkv.core.decode import DecodeScenario, DecodeSummary
from sparkv.cost_models.profiles import load_profile
from sparkv.cost_models.storage import load_storage
from sparkv.sim.decode import build_decode_world, simulate_decode

POLICIES = ["full-kv", "full-reload", "streaming", "h2o", "aerp", "kvswap", "hillinfer"]
SCENARIO = DecodeScenario(context_tokens=1024, steps=3, select_tokens=0, device="jetson-orin-nano-15w")
STORAGES = ["jetson-orin-nvme", "jetson-orin-emmc"]


def _config(fracs: list[float], policies: list[str] | None = None) -> dict[str, Any]:
    return {"scenario": SCENARIO.to_dict(), "policies": policies or POLICIES, "budget_fractions": fracs,
            "storages": STORAGES, "hill_bits": 8, "world": "sim"}  # fmt: skip


@pytest.fixture(scope="module")
def table() -> tuple[list[Any], Any]:
    cells, reference, _ = simulate_cells(_config([0.25, 0.0625]))
    return cells, reference


def test_every_policy_budget_and_storage_has_a_cell_and_full_kv_is_refused(table: tuple[list[Any], Any]) -> None:
    cells, reference = table
    assert {(c.policy, c.budget_fraction, c.storage) for c in cells} == {
        (p, f, s) for p in POLICIES for f in (0.25, 0.0625) for s in STORAGES}  # fmt: skip
    full = [c for c in cells if c.policy == "full-kv"]
    assert all(c.status == NEEDS_WHOLE_KV and c.tokens_per_s is None and c.energy_j_per_token is None for c in full)
    assert all(c.kv_bytes > c.budget_bytes and "whole KV" in c.note for c in full)
    assert reference.status == OK and reference.memory_bytes >= reference.kv_bytes and reference.tokens_per_s > 0
    for c in cells:  # a cell that ran within its budget is OK; one above it says so
        if c.status != NEEDS_WHOLE_KV:
            assert (c.status == OVER_BUDGET) == (c.memory_bytes > c.budget_bytes)


def test_group_cells_match_their_own_simulated_run_and_the_energy_model(table: tuple[list[Any], Any]) -> None:
    cells, _ = table
    power = load_profile(SCENARIO.device).power
    for name in ("kvswap", "hillinfer", "full-reload"):
        for storage in STORAGES:
            cell = next(c for c in cells if (c.policy, c.budget_fraction, c.storage) == (name, 0.25, storage))
            sc = SCENARIO.with_(budget_fraction=0.25, storage=storage)
            world = build_decode_world(sc)
            t = DecodeSummary.from_dict(simulate_decode(world, build_policy(name, sim_options(world, 8))).decode
                                        or {}).totals()  # fmt: skip
            assert cell.tokens_per_s == pytest.approx(t["tokens_per_s"])
            assert cell.bytes_read_per_token == pytest.approx(t["bytes_read"] / 3) and cell.bytes_read_per_token > 0
            run_s = 3 / t["tokens_per_s"]
            want = (power.active_w * (run_s - t["stall_s"]) + power.idle_w * t["stall_s"]
                    + load_storage(storage).read_w * t["read_s"]) / 3  # fmt: skip
            assert cell.energy_j_per_token == pytest.approx(want)
            assert cell.energy_parts["storage_read_j"] > 0


def test_slower_storage_is_slower_and_costs_more_for_disk_policies(table: tuple[list[Any], Any]) -> None:
    cells, _ = table
    by = {(c.policy, c.budget_fraction, c.storage): c for c in cells}
    for name in ("full-reload", "kvswap"):
        nvme, emmc = by[(name, 0.25, "jetson-orin-nvme")], by[(name, 0.25, "jetson-orin-emmc")]
        assert emmc.tokens_per_s < nvme.tokens_per_s
        assert emmc.energy_j_per_token > nvme.energy_j_per_token


def test_per_head_cells_read_no_disk_and_say_so(table: tuple[list[Any], Any]) -> None:
    cells, _ = table
    for name in ("aerp", "h2o"):
        mine = [c for c in cells if c.policy == name and c.budget_fraction == 0.25]
        assert len({c.tokens_per_s for c in mine}) == 1 and not any(c.uses_storage for c in mine)
        assert all("no disk" in c.note and c.energy_parts["storage_read_j"] == 0.0 for c in mine)
        assert all(c.memory_bytes <= c.budget_bytes for c in mine)
    small = next(c for c in cells if (c.policy, c.budget_fraction) == ("h2o", 0.0625))
    big = next(c for c in cells if (c.policy, c.budget_fraction) == ("h2o", 0.25))
    assert small.memory_bytes < big.memory_bytes  # N' follows the budget


def test_full_kv_runs_when_the_budget_holds_the_whole_kv() -> None:
    cells, _, _ = simulate_cells(_config([1.0], ["full-kv"]))
    assert all(c.status != NEEDS_WHOLE_KV and c.tokens_per_s and c.bytes_read_per_token == 0 for c in cells)
    assert all(c.kv_bytes == c.budget_bytes and c.memory_bytes >= c.kv_bytes for c in cells)


def test_accuracy_from_quality_files_matches_policy_and_budget(tmp_path: Path, table: tuple[list[Any], Any]) -> None:
    cells, _ = table
    group = tmp_path / "decode-quality.json"  # as `sparkv decode --quality --budget 1/4 --out DIR` writes it
    group.write_text(json.dumps({"scenario": SCENARIO.with_(budget_fraction=0.25).to_dict(), "rows": [
        {"kind": "niah", "length": 2048, "tokens": 2000, "depth": 0.5, "seed": 0, "answer": "1", "full-kv": 1.0,
         "kvswap": 1.0, "kvswap_text": "1", "recall": 0.9},
        {"kind": "niah", "length": 2048, "tokens": 2000, "depth": 0.9, "seed": 0, "answer": "2", "full-kv": 1.0,
         "kvswap": 0.0, "recall": 0.8, "kvswap_same": 0.0, "metric": "answer string"},
        {"kind": "quality", "length": 2048, "tokens": 2000, "depth": 0.0, "seed": 0, "answer": "(A)",
         "metric": "exam", "full-kv": 1.0, "kvswap": 1.0, "kvswap_same": 1.0}]}))  # a document question: not counted
    heads = tmp_path / "decode-kelle-quality.json"  # per head: N' = 128 of 2048 tokens is 1/16
    heads.write_text(json.dumps({"rows": [{"kind": "niah", "length": 2048, "depth": 0.5, "budget": 128, "full": 1.0,
                                           "aerp": 1.0, "h2o": 0.0}]}))  # fmt: skip
    attach_accuracy(cells, load_quality([group, heads]))
    by = {(c.policy, c.budget_fraction, c.storage): c for c in cells}
    assert by[("kvswap", 0.25, "jetson-orin-nvme")].accuracy_percent == pytest.approx(50.0)
    assert by[("kvswap", 0.25, "jetson-orin-nvme")].accuracy_n == 2
    assert not any(c.policy.endswith("_same") for c in cells) and ("kvswap_same", 0.25) not in load_quality([group])
    assert by[("kvswap", 0.0625, "jetson-orin-nvme")].accuracy_percent is None  # measured at 1/4 only
    assert by[("full-kv", 0.0625, "jetson-orin-emmc")].accuracy_percent == pytest.approx(100.0)  # any budget
    assert by[("aerp", 0.0625, "jetson-orin-emmc")].accuracy_percent == pytest.approx(100.0)
    assert by[("h2o", 0.0625, "jetson-orin-emmc")].accuracy_percent == pytest.approx(0.0)
    assert by[("h2o", 0.25, "jetson-orin-emmc")].accuracy_source == "not measured"
    assert by[("streaming", 0.25, "jetson-orin-emmc")].accuracy_percent is None


def test_command_prints_units_and_writes_json_csv_and_figure(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    code = main(["decode", "--whatif-table", "--context-tokens", "1024", "--steps", "2", "--whatif-budgets", "1/8",
                 "--whatif-storage", ",".join(STORAGES), "--out", str(tmp_path)])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "tokens/s" in out and "mJ/token" in out and "not measured" in out and "n/a: KV" in out
    assert "jetson-orin-nvme (analytic) tokens/s" in out and "M=what fits the budget" in out
    assert "SmartSSD's in-storage scoring time is modelled" in out
    data = json.loads((tmp_path / "decode-whatif.json").read_text())
    assert data["config"]["scenario"]["context_tokens"] == 1024 and data["config"]["storages"] == STORAGES
    assert data["config"]["budget_fractions"] == [0.125] and data["config"]["policies"] == POLICIES
    assert data["config"]["storage_kinds"] == {"jetson-orin-nvme": "analytic", "jetson-orin-emmc": "analytic"}
    assert data["config"]["scenario"]["device"] == "jetson-orin-nano-15w" and "device_active_j" in data["energy_model"]
    assert len(data["cells"]) == len(POLICIES) * len(STORAGES) and data["reference"]["policy"] == "full-kv"
    with (tmp_path / "decode-whatif.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(data["cells"]) and all(json.loads(r["config_scenario"])["steps"] == 2 for r in rows)
    assert (tmp_path / "decode-whatif.png").stat().st_size > 0


def test_a_quality_file_needs_the_table_and_must_exist(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decode", "--quality", str(tmp_path / "q.json"), "--steps", "2"]) == 2
    assert main(["decode", "--whatif-table", "--quality", str(tmp_path / "q.json"), "--steps", "2",
                 "--context-tokens", "1024", "--whatif-storage", "jetson-orin-nvme"]) == 2  # fmt: skip
    assert main(["decode", "--whatif-table", "--budget", "1/8", "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert "--whatif-table" in err and "no such results file" in err
