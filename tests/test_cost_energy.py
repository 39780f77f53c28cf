"""Radio and compute energy against closed forms on hand-made spans."""

from __future__ import annotations

import pytest

from sparkv.core.errors import UserError
from sparkv.core.request import CellBlock
from sparkv.core.result import Span
from sparkv.cost_models.energy import (
    RADIO_MODELS,
    ComputePower,
    compute_energy_j,
    get_radio,
    radio_energy_j,
    request_energy_j,
)

LTE = get_radio("lte")


def fetch(start: float, end: float, n_bytes: int) -> Span:
    return Span("link", "fetch", start, end, CellBlock.one(0, 0, 1), n_bytes)


def test_lte_promotion_active_tail_closed_form() -> None:
    spans = [fetch(1.0, 3.0, 2_500_000), fetch(5.0, 6.0, 0)]  # 10 Mbit/s for 2 s, then an empty transfer
    expected = (
        0.2601 * 1.2107  # promotion, ending as the first transfer starts
        + (1.0 - 0.2601) * LTE.idle_w  # idle before the promotion
        + 2.0 * (1.28804 + 0.05197 * 10.0)  # active at 10 Mbit/s
        + 2.0 * 1.0600  # the gap, inside the tail
        + 1.0 * 1.28804  # active at 0 Mbit/s
        + 11.576 * 1.0600  # the whole tail after the last transfer
    )
    assert radio_energy_j(spans, LTE, end_s=7.0) == pytest.approx(expected, rel=1e-9)


def test_gap_longer_than_tail_idles_and_tail_can_be_cut_at_the_end() -> None:
    spans = [fetch(0.0, 1.0, 0), fetch(20.0, 21.0, 0)]
    gap = 11.576 * 1.06 + (19.0 - 11.576) * LTE.idle_w
    base = 0.2601 * 1.2107 + 2 * 1.28804
    assert radio_energy_j(spans, LTE, 22.0) == pytest.approx(base + gap + 11.576 * 1.06)
    assert radio_energy_j(spans, LTE, 22.0, count_tail=False) == pytest.approx(base + gap + 1.0 * 1.06)


def test_3g_has_two_tails_and_no_link_means_idle() -> None:
    g3 = get_radio("3g")
    assert g3.gap_j(10.0) == pytest.approx(8.0882 * 0.8039 + 0.8242 * 0.6013 + (10.0 - 8.0882 - 0.8242) * g3.idle_w)
    assert g3.full_tail_j == pytest.approx(8.0882 * 0.8039 + 0.8242 * 0.6013)
    assert radio_energy_j([], LTE, 3.0) == pytest.approx(3.0 * LTE.idle_w)


def test_radio_table_sources_and_aliases() -> None:
    assert get_radio("5g") is RADIO_MODELS["5g-mmwave"]
    assert get_radio("4G") is LTE
    for model in RADIO_MODELS.values():
        assert model.source and ("Huang" in model.source or "Narayanan" in model.source)
    # 5G mmWave: higher base power, far lower power per Mbit/s than LTE (the paper's crossover)
    mmw = get_radio("5g-mmwave")
    assert mmw.active_base_w > LTE.active_base_w and mmw.active_w_per_mbps < LTE.active_w_per_mbps
    assert mmw.active_w(1000) < LTE.active_w(1000)
    with pytest.raises(UserError):
        get_radio("6g")


def test_compute_energy_and_request_total() -> None:
    power = ComputePower(active_w=10.0, idle_w=2.0)
    spans = [Span("compute", "compute", 0.0, 1.5), Span("compute", "query", 2.0, 2.5), fetch(0.0, 1.0, 0)]
    assert compute_energy_j(spans, power, 4.0) == pytest.approx((20.0, 4.0))
    total = request_energy_j(spans, LTE, power, 4.0)
    assert total["compute"] == pytest.approx(20.0) and total["idle"] == pytest.approx(4.0)
    assert total["radio"] == pytest.approx(radio_energy_j(spans, LTE, 4.0))
