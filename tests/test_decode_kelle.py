"""Per-head eviction (AERP, H2O): the policy's rules, the recompute break-even, the real executor on a tiny
random Llama (no eviction = the model's own greedy tokens; recomputation from x), the simulator replaying a
real run's attention (same decisions, same bytes), bit errors, and the modelled memory energy."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sparkv.analysis.kelle_validate import compare_head_runs, fit_head_compute
from sparkv.core.decode import DecodeScenario, HeadAttention, ScoresReady, decode_geometry
from sparkv.core.model import ModelSpec, resolve_model_spec
from sparkv.cost_models.kelle import (
    EDRAM,
    SRAM,
    MemoryConfig,
    TokenTraffic,
    fit_retention,
    kelle_configs,
    token_energy,
    two_drp,
    uniform_refresh,
)
from sparkv.engine.decode import replay_decode
from sparkv.executor.model.kelle_run import PREFILL_FILE, BitErrors, KelleSetup, prepare_kelle, run_kelle_real
from sparkv.executor.model.models import tiny_model
from sparkv.policies.decode import make_decode_policy
from sparkv.policies.decode.base import DecodeContext
from sparkv.policies.decode.kelle import HeadBudget, HeadPrefill, RecomputeRule
from sparkv.sim.kelle import RecordedAttention, SyntheticAttention, run_kelle_sim

SPEC = ModelSpec("tiny", 2, 64, 4, 2, 16, 128, 256)
SCENARIO = DecodeScenario(context_tokens=96, group_tokens=1, steps=10, sink_tokens=4, select_tokens=0,
                          budget_fraction=1.0)  # fmt: skip


def _started(name: str, budget: int, importance: list[np.ndarray]) -> HeadBudget:
    prefill = HeadPrefill(2, 16, 64, 2, importance)
    ctx = DecodeContext(decode_geometry(SPEC, SCENARIO), "tiny", prefill=prefill)
    policy = make_decode_policy(name, budget_tokens=budget)
    assert isinstance(policy, HeadBudget)
    policy.begin(ctx)
    for layer in range(SPEC.num_layers):
        policy.initial_resident(layer)
    return policy


def test_prefill_keeps_sinks_recent_and_each_heads_top() -> None:
    rng = np.random.default_rng(0)
    imp = [rng.random((2, 96)) for _ in range(2)]
    imp[0][0, 40] = imp[0][1, 50] = 100.0  # a heavy hitter per head
    policy = _started("aerp", 32, imp)
    for layer in range(2):
        for h, (tokens, _) in enumerate(policy.head_state(layer)):
            assert tokens.size == 32 and set(range(10)) <= set(tokens.tolist())  # 10 sinks (Kelle)
            assert set(range(80, 96)) <= set(tokens.tolist())  # recent window N'/2 = 16
            rest = [t for t in tokens.tolist() if 10 <= t < 80]
            want = sorted(range(10, 80), key=lambda t: -imp[layer][h, t])[:6]
            assert sorted(rest) == sorted(want)
    assert 40 in policy.head_state(0)[0][0] and 50 in policy.head_state(0)[1][0]
    h2o = _started("h2o", 32, imp)
    assert h2o.settings.sink_tokens == 0 and h2o.recent == 16


def test_eviction_drops_the_lowest_accumulated_attention_outside_the_window() -> None:
    imp = [np.ones((2, 96)) for _ in range(2)]
    policy = _started("h2o", 32, imp)
    plan = policy.plan(ScoresReady(0.0, 0, 0, 96))
    assert len(plan.heads) == 2 and all(len(h) == 32 for h in plan.heads) and plan.read == ()
    weights = []
    for h in plan.heads:
        w = np.full(len(h) + 1, 0.5)
        w[0] = 0.0  # the oldest kept token receives nothing this step
        weights.append(w)
    policy.update(HeadAttention(0.0, 0, 0, tuple(weights)))
    oldest = [h[0] for h in plan.heads]
    from sparkv.core.decode import GroupAppended

    policy.update(GroupAppended(0.0, 0, 96))
    nxt = policy.plan(ScoresReady(0.0, 1, 0, 97))
    for h, before in zip(nxt.heads, oldest, strict=True):
        assert len(h) == 32 and 96 in h and before not in h
    with pytest.raises(ValueError):  # weights that do not match the plan are refused
        policy.update(HeadAttention(0.0, 1, 0, (np.ones(3), np.ones(3))))


def test_recompute_rule_break_even() -> None:
    smol = resolve_model_spec("smollm2-135m")
    rule = RecomputeRule(smol.hidden_size, smol.num_kv_heads, smol.head_dim)
    assert not rule.ever_saves and rule.break_even_fraction == pytest.approx(1.5)  # 576 vs 2 x 3 x 64 = 384
    assert not any(rule.stores_x(k) for k in range(4)) and "never saves" in rule.describe()
    mha = RecomputeRule(64, 4, 16)  # no GQA: d_model = H x hd, so break-even is 50 % of the heads
    assert mha.ever_saves and mha.break_even_fraction == 0.5
    assert [mha.stores_x(k) for k in range(5)] == [False, False, False, True, True]


@pytest.fixture(scope="module")
def setup() -> KelleSetup:
    loaded = tiny_model("llama", num_layers=3, hidden_size=64, num_heads=4, num_kv_heads=4)  # no GQA
    ids = torch.randint(0, 256, (SCENARIO.context_tokens,), generator=torch.Generator().manual_seed(0))
    return prepare_kelle(loaded, ids, SCENARIO)


def test_no_eviction_decodes_like_the_model_and_recompute_changes_nothing(setup: KelleSetup) -> None:
    ids = torch.randint(0, 256, (SCENARIO.context_tokens,), generator=torch.Generator().manual_seed(0))
    ref = setup.loaded.model.generate(ids[None], max_new_tokens=SCENARIO.steps + 1, do_sample=False)[0, 96:].tolist()
    plain = run_kelle_real(setup, make_decode_policy("aerp", budget_tokens=200, recompute=False))
    rec = run_kelle_real(setup, make_decode_policy("aerp", budget_tokens=200))
    assert plain.tokens == ref and rec.tokens == ref
    stats = (rec.result.decode or {})["policy_stats"]
    assert stats["recompute_active"] and stats["x_tokens_end"] > 0
    plain_held = (plain.result.decode or {})["policy_stats"]["held_bytes_mean"]
    assert stats["held_bytes_mean"] < 0.6 * plain_held  # x (64 values) instead of K+V of 4 heads (128)


def test_eviction_changes_the_output_and_evicted_entries_are_never_read(setup: KelleSetup) -> None:
    run = run_kelle_real(setup, make_decode_policy("h2o", budget_tokens=24))
    stats = (run.result.decode or {})["policy_stats"]
    assert stats["evictions"] > 0 and len(run.tokens) == SCENARIO.steps + 1
    for weights in run.attention.values():  # evicted entries hold NaN: any read of one would show here
        assert all(np.isfinite(w).all() and len(w) == 25 for w in weights)


def test_simulator_replaying_real_attention_decides_identically(setup: KelleSetup) -> None:
    runs = {n: run_kelle_real(setup, make_decode_policy(n, budget_tokens=32), log=True) for n in ("aerp", "h2o")}
    fit = fit_head_compute([r.engine for r in runs.values()], 4)
    assert fit.kind == "calibrated" and fit.per_head_token_s >= 0
    for name, run in runs.items():
        sim, _ = run_kelle_sim(SCENARIO, setup.loaded.spec, setup.geometry, setup.prefill,
                               RecordedAttention(run.attention), fit,
                               make_decode_policy(name, budget_tokens=32))  # fmt: skip
        row = compare_head_runs(run.result, sim)
        assert row["bytes_match"] and row["evictions_match"]
        ctx = DecodeContext(setup.geometry, "tiny", prefill=setup.prefill)
        assert replay_decode(ctx, make_decode_policy(name, budget_tokens=32), run.engine.log) == []
    wrong = run_kelle_sim(SCENARIO, setup.loaded.spec, setup.geometry, setup.prefill,
                          RecordedAttention(runs["h2o"].attention), fit, make_decode_policy("h2o", budget_tokens=32))[0]
    assert not compare_head_runs(runs["aerp"].result, wrong)["bytes_match"]  # a different run does not match


def test_synthetic_attention_runs_smollm2_geometry_in_the_simulator() -> None:
    spec = resolve_model_spec("smollm2-135m")
    sc = SCENARIO.with_(context_tokens=600, steps=4)
    att = SyntheticAttention(spec.num_layers, spec.num_kv_heads, 605)
    from sparkv.cost_models.kelle import HeadDecodeCompute

    compute = HeadDecodeCompute(1e-4, 1e-7, 0.0, 1e-3)
    result, _ = run_kelle_sim(sc, spec, decode_geometry(spec, sc), att.prefill(600, spec), att, compute,
                              make_decode_policy("aerp", budget_tokens=128))  # fmt: skip
    stats = (result.decode or {})["policy_stats"]
    assert stats["x_tokens_end"] == 0
    assert stats["evictions"] == 3 * 30 * 3  # one per head and layer at each step after the first
    assert stats["held_bytes_by_step"][-1] == 30 * 3 * 128 * 2 * 64 * 2
    assert att.source.startswith("synthetic")


def test_retention_fit_meets_its_anchors_and_refresh_costs() -> None:
    model = fit_retention()
    drp = two_drp()
    assert model.failure(45e-6) == pytest.approx(1e-9, rel=1e-3)
    assert drp.mean_failure(model) == pytest.approx(2e-3, rel=1e-3)
    assert drp.mean_interval_s() == pytest.approx(1.05e-3, rel=0.01)  # Kelle's mean retention
    assert uniform_refresh(model.interval_for(2e-3)).mean_failure(model) == pytest.approx(2e-3, rel=1e-6)
    hi, lo = drp.failure(model, ("high", "msb")), drp.failure(model, ("low", "lsb"))
    assert hi < 1e-5 < lo  # important tokens' high bits are protected
    assert drp.failure(model, ("low", "lsb"), lifetime_s=1e-5) < lo  # short-lived data fails less


def test_energy_ledger_orders_the_memories() -> None:
    spec = resolve_model_spec("smollm2-135m")
    traffic = TokenTraffic(2e6, 0.0, 2.3e4, 2e6, 0.0)
    sram, uni, drp = (token_energy(spec, traffic, c, batch=1) for c in kelle_configs())
    assert sram.lines[0].refresh_j == 0 and drp.lines[0].refresh_j < uni.lines[0].refresh_j
    assert drp.lines[0].read_j < sram.lines[0].read_j and drp.lines[0].leakage_j < sram.lines[0].leakage_j
    assert sram.onchip_fraction == 1.0 and sram.lines[1].read_j > 0  # weights still come from DRAM
    full = token_energy(spec, TokenTraffic.full_cache(spec, 8192), MemoryConfig("SRAM", SRAM), batch=16)
    kept = token_energy(spec, traffic, MemoryConfig("eDRAM+2DRP", EDRAM, two_drp()), batch=16)
    assert full.total_j > 2 * kept.total_j
    assert math.isclose(sum(x.total_j for x in full.lines), full.total_j)


def test_bit_errors_hit_the_stored_kv_at_the_modelled_rate(setup: KelleSetup) -> None:
    model = fit_retention()
    plan = uniform_refresh(model.interval_for(2e-3))
    errors = BitErrors(model, plan, step_s=0.02, seed=0)
    run = run_kelle_real(setup, make_decode_policy("h2o", budget_tokens=32), errors=errors)
    stats = errors.stats()
    assert 1e-3 < stats["failure_rate"] < 4e-3 and stats["flipped_bits"] > 0
    assert (run.result.extra or {})["bit_errors"]["modelled"]
    none = BitErrors(model, uniform_refresh(45e-6), step_s=0.02, seed=0)
    clean = run_kelle_real(setup, make_decode_policy("h2o", budget_tokens=32), errors=none)
    assert none.stats()["flipped_bits"] == 0
    plain = run_kelle_real(setup, make_decode_policy("h2o", budget_tokens=32))
    assert clean.tokens == plain.tokens


def test_kv_folder_keeps_the_prefill_and_a_second_setup_reuses_it(tmp_path: Path) -> None:
    loaded = tiny_model("llama", num_layers=3, hidden_size=64, num_heads=4, num_kv_heads=4)  # x is stored (no GQA)
    ids = torch.randint(0, 256, (SCENARIO.context_tokens,), generator=torch.Generator().manual_seed(0))
    memory = prepare_kelle(loaded, ids, SCENARIO)
    first = prepare_kelle(loaded, ids, SCENARIO, tmp_path / "kv")
    assert memory.path is None and not memory.reused
    assert first.path == tmp_path / "kv" / PREFILL_FILE and first.path.is_file() and not first.reused
    again = prepare_kelle(loaded, ids, SCENARIO.with_(steps=SCENARIO.steps + 3), tmp_path / "kv")
    assert again.reused and "read from" in again.prefill.source
    total = SCENARIO.context_tokens
    for a, b in zip(memory.store.k + memory.store.v, again.store.k + again.store.v, strict=True):
        assert torch.equal(a[:, :total], b[:, :total]) and torch.isnan(b[:, total:]).all()
    assert memory.store.x is not None and again.store.x is not None
    assert all(torch.equal(a[:total], b[:total]) for a, b in zip(memory.store.x, again.store.x, strict=True))
    policy = make_decode_policy("h2o", budget_tokens=24)
    assert run_kelle_real(again, policy).tokens[: SCENARIO.steps + 1] == run_kelle_real(
        memory, make_decode_policy("h2o", budget_tokens=24)).tokens  # fmt: skip
    other = ids.clone()
    other[5] = (other[5] + 1) % 256  # another context: computed again, the folder's file replaced
    assert not prepare_kelle(loaded, other, SCENARIO, tmp_path / "kv").reused
    assert prepare_kelle(loaded, other, SCENARIO, tmp_path / "kv").reused


@pytest.mark.parametrize("beta", [0.7, 1.0, 3.06, 6.0])
def test_at_equal_mean_failure_uniform_refresh_does_the_least_refresh_work(beta: float) -> None:
    """Jensen: with F convex in the refresh rate, no plan with one mean failure rate refreshes less than uniform
    refresh; 2DRP's intervals and random four-bucket plans alike."""
    from sparkv.cost_models.kelle import RefreshPlan, RetentionModel, equal_error_uniform

    model = RetentionModel(tau_s=39e-3, beta=beta)
    rng = np.random.default_rng(0)
    plans = [two_drp()] + [RefreshPlan("random", {b: float(v) for b, v in zip(
        (("high", "msb"), ("high", "lsb"), ("low", "msb"), ("low", "lsb")), rng.uniform(1e-4, 2e-2, 4), strict=True)},
        float(rng.uniform(0.1, 0.9))) for _ in range(20)]  # fmt: skip
    for plan in plans:
        same = equal_error_uniform(plan, model)
        assert same.mean_failure(model) == pytest.approx(plan.mean_failure(model), rel=1e-6)
        assert same.refreshes_per_byte_s() <= plan.refreshes_per_byte_s() * (1 + 1e-9)


def test_the_refresh_verdict_compares_at_equal_error_and_at_equal_quality() -> None:
    from sparkv.commands.decode_kelle import refresh_verdict

    def row(name: str, interval: float, rise: float, mj: float) -> dict[str, float | str]:
        return {"refresh": name, "interval_s": interval, "rise": rise, "refresh_mj": mj, "mean_failure": 2e-3}

    summary = [row("2DRP", 1.05e-3, 0.08, 0.34), row("uniform 5130 us", 5.13e-3, 70.0, 0.07),
               row("uniform 1050 us", 1.05e-3, 0.9, 0.34), row("uniform 430 us", 0.43e-3, 0.15, 0.82),
               row("uniform 200 us", 0.2e-3, 0.01, 1.8), row("uniform 1930 us", 1.93e-3, -0.5, 0.18)]  # fmt: skip
    verdict = refresh_verdict(summary, "2DRP", "uniform 5130 us")
    # the cheapest uniform within 0.1 of 2DRP's rise, every shorter one too (1930 us: lucky, past a failing 1050)
    assert verdict["equal_quality_uniform"]["refresh"] == "uniform 430 us"
    assert "2DRP x0.41" in verdict["lines"][1] and "2DRP x4.86" in verdict["lines"][0]
    summary[3] = row("uniform 430 us", 0.43e-3, 0.3, 0.82)  # beyond 2DRP's +0.08 + 0.1
    assert refresh_verdict(summary, "2DRP", "uniform 5130 us")["equal_quality_uniform"]["refresh"] == "uniform 200 us"
