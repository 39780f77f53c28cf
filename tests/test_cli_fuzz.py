"""Random bad values on the command line: every refusal is one line on stderr with exit status 2, never a
traceback."""

from __future__ import annotations

import random

import pytest

from sparkv import cli

BAD = ["nan", "inf", "-inf", "-1", "-5", "", "abc", "1e309", "0x", "--", "1,2"]
EXTRA = ["0", "1", "99999999999999999999", "0.5", "/nonexistent/dir/file"]
FLAGS = {
    ("simulate",): ["--bandwidth-scale", "--trace-offset", "--rtt-ms", "--context-tokens", "--query-tokens",
                    "--chunk-tokens", "--seed", "--max-sim-s"],
    ("sweep", "--dry-run"): ["--bandwidth-scale", "--rtt-ms", "--context-tokens", "--jobs", "--trace-offset", "--seed"],
    ("bench", "sim"): ["--requests", "--repeats", "--max-wall-s"],
    ("bench", "server"): ["--clients", "--requests", "--corrupt-rate", "--stall-rate", "--stall-s", "--kill-every-s"],
}
NEVER_VALID = {"nan", "inf", "-inf", "", "abc", "1e309", "0x", "1,2", "-1", "-5"}


@pytest.fixture
def main(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setattr(cli, "_COMMANDS", ("simulate", "sweep", "bench"))
    return cli.main


def test_random_bad_values_are_one_line_refusals(main, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(0)
    for _ in range(300):
        command = rng.choice(list(FLAGS))
        flags = rng.sample(FLAGS[command], k=min(len(FLAGS[command]), rng.randint(1, 3)))
        values = [rng.choice(BAD + EXTRA) for _ in flags]
        i = rng.randrange(len(flags))
        values[i] = rng.choice(sorted(NEVER_VALID - ({"1,2"} if command[0] == "sweep" else set())))  # sweep: lists
        argv = [*command, *(f"{f}={v}" for f, v in zip(flags, values, strict=True))]
        code = main(argv)
        err = capsys.readouterr().err.strip()
        assert code == 2, (argv, code, err)
        assert "Traceback" not in err and "\n" not in err and err.startswith("sparkv"), (argv, err)
