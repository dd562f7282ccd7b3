"""The power core: caps that keep a domain under its budget, lowest priority first, lifted with hysteresis."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from autoscaler.power import Domain, DomainState, GPUState, PowerCapper, forecast_gpu_draw
from catalogue.gpus import GPU_PROFILES

H100 = GPU_PROFILES["NVIDIA-H100-80GB-HBM3"]


def gpu(node: str = "n0", index: int = 0, drawn: float = 650.0, **kw: Any) -> GPUState:
    """An H100 running `kw['workload']` (default: a busy medium-priority service) and drawing `drawn` watts."""
    base = GPUState(
        node=node,
        index=index,
        tdp_w=H100.tdp_w,
        min_limit_w=H100.min_power_limit_w,
        idle_w=H100.idle_w,
        drawn_w=drawn,
        workload="default/svc",
        priority=0,
    )
    return replace(base, **kw)


def rack(high: int, low: int, drawn: float = 650.0, **kw: Any) -> list[GPUState]:
    """`high` GPUs of a priority-1000 service on node "hi", `low` GPUs of a priority-0 service on node "lo"."""
    return [gpu("hi", i, drawn, workload="prod/chat", priority=1000, **kw) for i in range(high)] + [
        gpu("lo", i, drawn, workload="batch/code", priority=0, **kw) for i in range(low)
    ]


def domain(budget: float, gpus: list[GPUState], **kw: Any) -> Domain:
    return Domain(name=kw.pop("name", "rack"), budget_w=budget, members=tuple(g.key for g in gpus), **kw)


def expected(gpus: list[GPUState], caps: Any) -> float:
    return sum(min(max(g.drawn_w, g.forecast_w or 0.0), caps.get(g.key) or g.tdp_w) for g in gpus)


class TestUnderBudget:
    def test_no_cap_when_the_domain_fits(self) -> None:
        gpus = rack(4, 4, drawn=400.0)
        plan = PowerCapper().tick(0.0, [domain(8 * 700, gpus)], gpus)
        assert all(c is None for c in plan.caps.values())
        d = plan.domains["rack"]
        assert d.state is DomainState.WITHIN_BUDGET
        assert d.drawn_w == pytest.approx(8 * 400)
        assert d.headroom_w == pytest.approx(8 * 700 - 8 * 400)

    def test_low_priority_capped_first_and_high_left_alone(self) -> None:
        gpus = rack(4, 4, drawn=560.0, forecast_w=650.0)
        budget = 8 * 650 - 600  # the forecast is 600 W short
        plan = PowerCapper().tick(0.0, [domain(budget, gpus)], gpus)
        assert all(plan.caps[("hi", i)] is None for i in range(4))
        low = [plan.caps[("lo", i)] for i in range(4)]
        assert all(c is not None and c < 650 for c in low)
        assert len(set(low)) == 1  # one water level across the tier
        assert expected(gpus, plan.caps) <= budget
        assert plan.domains["rack"].state is DomainState.CAPPING

    def test_high_priority_capped_only_once_low_priority_is_at_its_floor(self) -> None:
        gpus = rack(4, 4, drawn=650.0)
        budget = 4 * 200 + 4 * 500  # low at the H100 minimum (200 W) still leaves high over
        plan = PowerCapper().tick(0.0, [domain(budget, gpus)], gpus)
        assert all(plan.caps[("lo", i)] == H100.min_power_limit_w for i in range(4))
        assert all((plan.caps[("hi", i)] or 700) <= 500 for i in range(4))
        assert expected(gpus, plan.caps) <= budget

    def test_floor_per_gpu_is_respected(self) -> None:
        gpus = rack(0, 4, drawn=650.0)
        plan = PowerCapper().tick(0.0, [domain(4 * 300, gpus, floor_w=350.0)], gpus)
        assert all(plan.caps[g.key] == 350.0 for g in gpus)
        assert plan.domains["rack"].state is DomainState.INFEASIBLE

    def test_decode_heavy_capped_before_prefill_heavy_on_a_tie(self) -> None:
        gpus = [gpu("n", 0, prefill_share=0.1, workload="a/decode"), gpu("n", 1, prefill_share=0.9, workload="a/pre")]
        plan = PowerCapper().tick(0.0, [domain(1300 - 200, gpus)], gpus)
        assert plan.caps[("n", 0)] is not None
        assert plan.caps[("n", 1)] is None

    def test_slo_missing_work_is_capped_after_work_meeting_its_slo(self) -> None:
        gpus = [gpu("n", 0, slo_slack=-0.2, workload="a/late"), gpu("n", 1, slo_slack=0.5, workload="a/fine")]
        plan = PowerCapper().tick(0.0, [domain(1300 - 200, gpus)], gpus)
        assert plan.caps[("n", 0)] is None
        assert plan.caps[("n", 1)] is not None

    def test_proportional_caps_everyone_alike(self) -> None:
        gpus = rack(2, 2, drawn=650.0)
        plan = PowerCapper().tick(0.0, [domain(4 * 500, gpus, order="Proportional")], gpus)
        assert {plan.caps[g.key] for g in gpus} == {500.0}

    def test_exempt_priority_is_never_capped(self) -> None:
        gpus = rack(2, 2, drawn=650.0)
        plan = PowerCapper().tick(0.0, [domain(2 * 650 + 2 * 200, gpus, exempt_priority_above=999)], gpus)
        assert plan.caps[("hi", 0)] is None and plan.caps[("hi", 1)] is None
        assert plan.caps[("lo", 0)] == 200.0

    def test_idle_gpus_are_capped_to_their_floor_when_the_domain_is_short(self) -> None:
        gpus = [*rack(0, 2, drawn=650.0), gpu("lo", 2, drawn=70.0, workload=None)]
        plan = PowerCapper().tick(0.0, [domain(2 * 500 + 70, gpus)], gpus)
        assert plan.caps[("lo", 2)] == H100.min_power_limit_w


class TestForecast:
    def test_a_forecast_rise_caps_before_the_draw_crosses(self) -> None:
        now = rack(2, 2, drawn=450.0)
        ahead = [replace(g, forecast_w=680.0) for g in now]
        budget = 4 * 600
        plain = PowerCapper().tick(0.0, [domain(budget, now)], now)
        assert all(c is None for c in plain.caps.values())
        plan = PowerCapper().tick(0.0, [domain(budget, ahead)], ahead)
        assert plan.domains["rack"].state is DomainState.CAPPING
        assert plan.domains["rack"].drawn_w < budget
        assert plan.domains["rack"].forecast_w <= budget
        assert plan.domains["rack"].demand_w == pytest.approx(4 * 680)

    def test_forecast_draw_follows_the_demand_through_the_power_curve(self) -> None:
        assert forecast_gpu_draw(H100, 0.5, 10.0, 20.0) == pytest.approx(H100.tdp_w)
        assert forecast_gpu_draw(H100, 0.5, 10.0, 10.0) == pytest.approx((H100.tdp_w + H100.idle_w) / 2)
        assert forecast_gpu_draw(H100, 0.0, 0.0, 0.0) == pytest.approx(H100.idle_w)
        assert forecast_gpu_draw(H100, 0.0, 0.0, 5.0) == pytest.approx(H100.tdp_w)


class TestHysteresis:
    def test_caps_are_lifted_only_below_the_hysteresis_band(self) -> None:
        capper = PowerCapper()
        budget = 4 * 600.0
        hot = rack(2, 2, drawn=680.0)
        d = domain(budget, hot, hysteresis_percent=10.0)
        caps = capper.tick(0.0, [d], hot).caps
        low_cap = caps[("lo", 0)]
        assert low_cap is not None
        # Load falls a little: needs fit the budget but not the band below it -> the cap is kept (not lifted).
        warm = [replace(g, drawn_w=min(590.0, caps[g.key] or 700), limit_w=caps[g.key]) for g in hot]
        warm = [replace(g, forecast_w=590.0) for g in warm]
        kept = capper.tick(1.0, [d], warm).caps
        assert kept[("lo", 0)] is not None
        assert kept[("lo", 0)] >= low_cap  # only ever raised, never tightened, while under budget
        # Load falls well below the band: caps are lifted entirely once the recent peaks have aged out.
        cool = [replace(g, drawn_w=400.0, forecast_w=400.0, limit_w=kept[g.key]) for g in hot]
        assert capper.tick(2.0, [d], cool).caps[("lo", 0)] is not None  # the 680 W peak is still recent
        assert all(c is None for c in capper.tick(20.0, [d], cool).caps.values())

    def test_no_cap_is_raised_during_the_hold_down_after_a_cut(self) -> None:
        capper = PowerCapper(peak_window_s=0.0, lift_dwell_s=5.0)
        d = domain(4 * 600.0, rack(2, 2), hysteresis_percent=10.0)
        hot = rack(2, 2, drawn=560.0, forecast_w=680.0)
        caps = capper.tick(0.0, [d], hot).caps
        cool = [replace(g, drawn_w=300.0, forecast_w=300.0, limit_w=caps[g.key]) for g in hot]
        assert capper.tick(3.0, [d], cool).caps == caps  # within the hold-down: kept
        assert all(c is None for c in capper.tick(6.0, [d], cool).caps.values())

    def test_a_bursty_gpu_is_planned_at_its_recent_peak(self) -> None:
        capper = PowerCapper(peak_window_s=10.0)
        d = domain(4 * 600.0, rack(2, 2))
        capper.tick(0.0, [d], rack(2, 2, drawn=690.0, forecast_w=690.0))  # a burst
        dip = rack(2, 2, drawn=450.0)
        plan = capper.tick(5.0, [d], dip)
        assert plan.domains["rack"].demand_w == pytest.approx(4 * 690.0)
        assert plan.domains["rack"].state is DomainState.CAPPING

    def test_no_cap_is_introduced_inside_the_band(self) -> None:
        gpus = rack(2, 2, drawn=590.0)
        plan = PowerCapper().tick(0.0, [domain(4 * 600, gpus, hysteresis_percent=10.0)], gpus)
        assert all(c is None for c in plan.caps.values())


class TestEmergency:
    def test_measured_draw_over_budget_caps_at_once_and_counts_seconds(self) -> None:
        capper = PowerCapper()
        gpus = rack(2, 2, drawn=690.0, forecast_w=500.0)  # the forecast missed a burst
        d = domain(4 * 600, gpus)
        first = capper.tick(10.0, [d], gpus).domains["rack"]
        assert first.emergency and first.state is DomainState.BUDGET_EXCEEDED
        assert first.seconds_over == 0.0
        assert expected(gpus, first.caps) <= d.budget_w
        later = capper.tick(12.0, [d], gpus).domains["rack"]
        assert later.seconds_over == pytest.approx(2.0)
        assert "2 s" in later.message
        calm = [replace(g, drawn_w=550.0) for g in gpus]
        assert capper.tick(13.0, [d], calm).domains["rack"].seconds_over == 0.0

    def test_a_pinned_gpu_is_assumed_to_want_its_full_power_in_an_emergency(self) -> None:
        gpus = [gpu("n", 0, drawn=395.0, limit_w=400.0, priority=0), gpu("n", 1, drawn=700.0, priority=0)]
        plan = PowerCapper().tick(0.0, [domain(1000, gpus)], gpus)
        assert sum((plan.caps[g.key] or 700.0) for g in gpus) <= 1000


class TestBadInput:
    def test_floors_over_budget_is_infeasible_with_the_numbers(self) -> None:
        gpus = rack(2, 2)
        d = PowerCapper().tick(0.0, [domain(700, gpus, floor_w=250.0)], gpus).domains["rack"]
        assert d.state is DomainState.INFEASIBLE
        assert d.floors_w == pytest.approx(1000)
        assert "1000 W" in d.message and "700 W" in d.message
        assert all(c == 250.0 for c in d.caps.values())

    def test_idle_gpus_count_at_their_idle_draw_not_their_floor(self) -> None:
        gpus = [*rack(0, 1, drawn=650.0), *[gpu("lo", i, drawn=70.0, workload=None) for i in range(1, 8)]]
        d = PowerCapper().tick(0.0, [domain(650 + 7 * 70, gpus, floor_w=300.0)], gpus).domains["rack"]
        assert d.state is not DomainState.INFEASIBLE  # 7 idle GPUs at a 300 W floor would be 2100 W
        assert d.floors_w == pytest.approx(300 + 7 * 70)

    def test_a_domain_with_no_gpus_is_within_budget(self) -> None:
        d = PowerCapper().tick(0.0, [Domain("empty", 1000.0, ())], []).domains["empty"]
        assert d.state is DomainState.WITHIN_BUDGET and d.caps == {}

    def test_overlapping_domains_take_the_tighter_cap_per_gpu_and_say_so(self) -> None:
        gpus = rack(0, 4, drawn=650.0)
        wide = domain(4 * 650, gpus, name="row")
        narrow = Domain("rack", 2 * 400, (("lo", 0), ("lo", 1)))
        plan = PowerCapper().tick(0.0, [wide, narrow], gpus)
        assert plan.caps[("lo", 0)] == 400.0 and plan.caps[("lo", 2)] is None
        assert plan.domains["row"].overlaps == ("rack",)
        assert "rack" in plan.domains["row"].message and "tighter" in plan.domains["rack"].message


class TestAdmission:
    def test_a_scale_up_within_headroom_is_admitted(self) -> None:
        gpus = rack(2, 2, drawn=400.0)
        plan = PowerCapper().tick(0.0, [domain(4 * 700, gpus)], gpus)
        a = plan.admit("rack", gpus=2, watts_per_gpu=500.0, priority=0)
        assert a.allowed and not a.by_capping

    def test_high_priority_scale_up_makes_room_by_capping_low_priority(self) -> None:
        gpus = rack(2, 2, drawn=600.0)
        plan = PowerCapper().tick(0.0, [domain(4 * 650, gpus)], gpus)
        a = plan.admit("rack", gpus=1, watts_per_gpu=600.0, priority=1000)
        assert a.allowed and a.by_capping

    def test_a_scale_up_that_would_breach_is_refused_with_numbers(self) -> None:
        gpus = rack(2, 2, drawn=600.0)
        plan = PowerCapper().tick(0.0, [domain(4 * 650, gpus)], gpus)
        a = plan.admit("rack", gpus=4, watts_per_gpu=600.0, priority=0)
        assert not a.allowed
        assert "2600 W budget" in a.message

    def test_changed_lists_only_caps_that_move(self) -> None:
        gpus = rack(1, 2, drawn=650.0)
        plan = PowerCapper().tick(0.0, [domain(3 * 650 - 300, gpus)], gpus)
        moved = plan.changed(gpus)
        assert set(moved) == {("lo", 0), ("lo", 1)}
        applied = [replace(g, limit_w=plan.caps[g.key]) for g in gpus]
        assert plan.changed(applied) == {}
