"""The exact optimum of tiny requests (every decision searched) and the oracle measured against it."""

from __future__ import annotations

import numpy as np
import pytest

from sparkv.analysis.evaluate import oracle_beaten
from sparkv.analysis.oracle_exact import ExactSearch, oracle_gap_study, tiny_instance
from sparkv.policies.oracle import OraclePolicy
from sparkv.policies.oracle_replay import Replayer
from sparkv.policies.oracle_search import baseline_schedules


@pytest.mark.parametrize("seed", range(4))
def test_one_cell_is_computed_or_streamed(seed: int) -> None:
    inst = tiny_instance(np.random.default_rng(seed), 1, 1)
    replayer = Replayer(inst.costs, inst.foresight)
    runs = {s.label: replayer.run(s).ttft_s for s in baseline_schedules(1, 1)}
    search = ExactSearch(inst.costs, inst.foresight)
    assert search.run() == min(runs["local"], runs["stream"]) and search.complete


@pytest.mark.parametrize(("chunks", "layers", "seed"), [(2, 2, 0), (3, 2, 1), (2, 3, 2), (3, 2, 5)])
def test_the_exact_optimum_is_never_worse_than_the_oracle(chunks: int, layers: int, seed: int) -> None:
    """Searched from scratch (no incumbent), the optimum is at most the oracle's: its space holds every
    schedule the oracle can run."""
    inst = tiny_instance(np.random.default_rng(seed), chunks, layers)
    oracle = OraclePolicy(foresight=inst.foresight).best_schedule(inst.costs, inst.foresight).replayed.ttft_s
    search = ExactSearch(inst.costs, inst.foresight)
    best = search.run()
    assert search.complete
    assert best <= oracle * (1 + 1e-12)
    assert best >= 0.5 * oracle  # the same world: not wildly off either


def test_a_node_budget_cuts_the_search_short_and_says_so() -> None:
    inst = tiny_instance(np.random.default_rng(0), 3, 3)
    search = ExactSearch(inst.costs, inst.foresight, max_nodes=50)
    search.run()
    assert not search.complete


def test_gap_study_rows() -> None:
    rows = oracle_gap_study(instances=2, seed=1, shapes=((2, 2),))
    (row,) = rows
    assert row["shape"] == "2x2" and row["complete"] == 2
    assert 1.0 - 1e-12 <= row["median_ratio"] <= row["worst_ratio"]


def test_oracle_beaten_counts_pairs_below_the_oracle() -> None:
    common = {"trace_path": "t", "context_tokens": 1, "scale_kind": "ratio", "scale_target": 1.0, "status": "ok"}
    rows = [{**common, "policy": "oracle", "ttft_s": 10.0, "fluid_bound_s": 9.0},
            {**common, "policy": "local", "ttft_s": 9.95, "fluid_bound_s": 9.0},
            {**common, "policy": "stream", "ttft_s": 9.0, "fluid_bound_s": 9.0},
            {**common, "policy": "cake", "ttft_s": 10.5, "fluid_bound_s": 9.0}]  # fmt: skip
    got = oracle_beaten(rows)
    assert (got["beat_0_1pct"], got["beat_1pct"], got["scenarios"]) == (2, 1, 1)
    assert got["by_policy_0_1pct"] == {"local": 1, "stream": 1} and got["least_ratio"] == pytest.approx(0.9)
    assert got["bound_above_oracle"] == 0
