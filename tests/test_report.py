"""Reports: kind detection, config/headline/figure sections, well-formed HTML, Markdown, the CLI."""

from __future__ import annotations

import base64
import csv
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

import pytest

from sparkv import cli
from sparkv.analysis.report import detect_kind, find_meta, validation_rows, write_report
from sparkv.analysis.tables import load_rows, prediction_pairs

VOID = {"meta", "img", "br", "hr", "link", "input"}


class _Checker(HTMLParser):
    """Every element closed in order; collects images and headings."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.images: list[str] = []
        self.h2: list[str] = []
        self._in_h2 = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images.append(dict(attrs).get("src") or "")
        if tag not in VOID:
            self.stack.append(tag)
        self._in_h2 = tag == "h2"

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)

    def handle_data(self, data: str) -> None:
        if self._in_h2:
            self.h2.append(data)
            self._in_h2 = False


def check_html(path: Path) -> _Checker:
    checker = _Checker()
    text = path.read_text()
    assert text.startswith("<!DOCTYPE html>")
    checker.feed(text)
    assert not checker.errors and not checker.stack
    return checker


@pytest.fixture
def main(monkeypatch: pytest.MonkeyPatch) -> Callable[[list[str]], int]:
    monkeypatch.setattr(cli, "_COMMANDS", ("sweep", "report"))
    return cli.main


@pytest.fixture
def sweep_dir(tmp_path: Path, main: Callable[[list[str]], int]) -> Path:
    out = tmp_path / "sw"
    assert main(["sweep", "--trace", "const:20mbps", "--trace", "steps:1s@3mbps,1s@30mbps", "--bandwidth-scale",
                 "0.5,2", "--context-tokens", "1024", "--device", "analytic-cpu-2core", "--policy", "local,cake",
                 "--jobs", "1", "--keep-results", "--out", str(out)]) == 0  # fmt: skip
    return out


def test_sweep_report_html(sweep_dir: Path, main: Callable[[list[str]], int]) -> None:
    assert main(["report", str(sweep_dir)]) == 0
    page = sweep_dir / "report.html"
    checker = check_html(page)
    assert checker.h2[:3] == ["What was run", "Headline", "Figures"]
    assert "Machine and versions" in checker.h2
    assert len(checker.images) == 4 and all(s.startswith("data:image/png;base64,") for s in checker.images)
    assert base64.b64decode(checker.images[0].split(",", 1)[1])[:4] == b"\x89PNG"
    text = page.read_text()
    assert "sparkv sweep report" in text and "bandwidth_scale" in text and "median TTFT s" in text
    assert "analytic-cpu-2core" in text and "python" in text  # config and versions


def test_markdown_report_and_result_folder(sweep_dir: Path, tmp_path: Path) -> None:
    md = write_report(sweep_dir / "results.csv", tmp_path / "md" / "r.md", "md")
    text = md.read_text()
    assert text.startswith("# sparkv sweep report") and "| policy |" in text
    images = [line for line in text.splitlines() if line.startswith("![")]
    assert len(images) == 4 and all((md.parent / line.split("(")[1].rstrip(")")).is_file() for line in images)
    folder = write_report(sweep_dir / "runs", tmp_path / "res.html")  # Result JSONs only (one folder per run)
    assert "sparkv results report" in folder.read_text()
    check_html(folder)
    assert find_meta(sweep_dir / "runs") == {}


def test_validation_table(tmp_path: Path) -> None:
    path = tmp_path / "validation.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["policy", "context_tokens", "sim_ttft_s", "real_ttft_s", "sim_energy_j", "real_energy_j"])
        for i in range(6):
            w.writerow(["cake" if i % 2 else "local", 1024, 10 + i, 10 + i * 1.1, 50, 55])
    rows = load_rows(path)
    assert prediction_pairs(rows) == [("energy_j", "sim_energy_j", "real_energy_j"),
                                      ("ttft_s", "sim_ttft_s", "real_ttft_s")]  # fmt: skip
    assert detect_kind(rows, {}) == "validation"
    errs = {(r["quantity"], r["policy"]): r for r in validation_rows(rows)}
    assert errs[("energy_j", "cake")]["median_abs_rel_err_pct"] == pytest.approx(100 * 5 / 55)
    assert errs[("ttft_s", "local")]["mean_signed_err"] < 0
    checker = check_html(write_report(path, tmp_path / "v.html"))
    assert len(checker.images) == 2  # one scatter per quantity (no ttft figures: no status/trace columns needed)


def test_validation_with_speed_probes_reports_both_predictions(tmp_path: Path) -> None:
    path = tmp_path / "validation.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["policy", "sim_ttft_s", "real_ttft_s", "sim_profile_ttft_s", "device_speed"])
        for i in range(4):
            w.writerow(["local", 10 + i, 10 + i, 12.5 + 1.25 * i, 0.8])
    errs = {(r["quantity"], r["policy"]): r for r in validation_rows(load_rows(path))}
    assert errs[("ttft_s", "local")]["median_abs_rel_err_pct"] == pytest.approx(0.0)
    assert errs[("ttft_s at profiled speed", "local")]["median_abs_rel_err_pct"] == pytest.approx(25.0)


def test_generic_table_and_errors(tmp_path: Path, main: Callable[[list[str]], int],
                                  capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    path = tmp_path / "t.csv"
    path.write_text("name,value_s\na,1.5\nb,2\n")
    check_html(write_report(path, tmp_path / "t.html"))
    assert detect_kind(load_rows(path), {}) == "table"
    assert main(["report", str(tmp_path / "missing.csv")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["report", str(path), str(path)]) == 2


def test_report_numbers_and_paths_read_as_a_person_would_write_them() -> None:
    from sparkv.analysis.report import _fmt, figure_caption, short_paths

    assert _fmt(16384.0) == "16384" and _fmt(10400.4) == "10400" and _fmt(None) == "-"
    assert _fmt(float("inf")) == "did not finish" and _fmt(3.14159) == "3.142"
    assert short_paths("trace /home/me/traces/3g/bus_1 (155 s), '/root/a.csv'") == "trace bus_1 (155 s), 'a.csv'"
    assert "context length" in figure_caption(Path("figs/ttft_cdf.png"))
