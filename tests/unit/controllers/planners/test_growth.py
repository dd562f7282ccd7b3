"""Widen expert parallelism or add whole replicas: whichever brings the capacity online sooner, said in the reason."""

from __future__ import annotations

import pytest

from autoscaler.profile import engine_profile
from autoscaler.types import SLO
from catalogue.elastic import resize_timings
from catalogue.gpus import lookup_gpu
from catalogue.models import lookup_model
from catalogue.perf import PerfModel
from controllers.planners.growth import Growth, Narrowing, StartupModel, choose_growth, choose_narrowing
from crds.reasons import Reason

V2 = lookup_model("deepseek-v2-lite")
H100 = lookup_gpu("H100")
SLO_ = SLO(ttft_s=2.0, itl_s=0.1)
SLOW_COLD_START_S = 3600.0  # a measured cold start no in-place resize of one replica takes
FAST_COLD_START_S = 1.0  # one no resize can beat


def grow(**kw: object) -> object:
    assert V2 is not None and H100 is not None
    args: dict[str, object] = {"replicas": 1, "wanted": 2, "width": 2, "max_width": 8}
    args.update(kw)
    return choose_growth(V2, H100, SLO_, **args)  # type: ignore[arg-type]


def rate(width: int) -> float:
    assert V2 is not None and H100 is not None
    return engine_profile(V2, H100, 1, SLO_, expert_parallel=width).request_rate


class TestChooseGrowth:
    def test_widens_when_the_resize_is_sooner_and_names_both_times(self) -> None:
        c = grow(replica_start_s=SLOW_COLD_START_S)
        assert c.growth == Growth.WIDEN and c.reason == Reason.AUTOSCALED
        assert c.replicas == 1, "widening keeps the replica count"
        assert c.widen_s is not None and c.widen_s < c.replica_s == SLOW_COLD_START_S
        assert f"EP 2 -> {c.width}" in c.message
        assert f"~{c.widen_s:.0f} s" in c.message and f"~{c.replica_s:.0f} s" in c.message
        assert f"{c.window_s:.0f} s 503 window" in c.message

    def test_the_widening_estimate_is_pod_start_weight_pull_and_the_503_window(self) -> None:
        assert V2 is not None
        startup = StartupModel(image_pull_s=30.0)
        c = grow(replica_start_s=SLOW_COLD_START_S, startup=startup, replicas=2, wanted=3)
        t = resize_timings(V2, 2, c.width, V2.experts // 2)
        assert c.widen_s == pytest.approx(2 * (startup.image_pull_s + t.prepare_s + t.commit_s)), "one at a time"
        assert c.window_s == t.commit_s > 0

    def test_a_measured_joiner_start_replaces_the_modelled_image_pull(self) -> None:
        modelled = grow(replica_start_s=SLOW_COLD_START_S)
        measured = grow(replica_start_s=SLOW_COLD_START_S, joiner_start_s=0.0)
        assert modelled.widen_s is not None and measured.widen_s is not None
        assert modelled.widen_s - measured.widen_s == pytest.approx(StartupModel().image_pull_s)

    def test_adds_replicas_when_a_cold_start_is_sooner(self) -> None:
        c = grow(replica_start_s=FAST_COLD_START_S)
        assert c.growth == Growth.REPLICAS and c.replicas == 2 and c.width == 2
        assert c.widen_s is not None and c.widen_s > c.replica_s
        assert "whole replicas sooner" in c.message and f"~{c.widen_s:.0f} s" in c.message

    def test_without_a_measured_cold_start_the_catalogue_models_it(self) -> None:
        assert V2 is not None and H100 is not None
        c = grow()
        assert c.replica_s == PerfModel(V2, H100, 1, expert_parallel=2).cold_start_seconds()

    def test_a_tie_goes_to_whole_replicas(self) -> None:
        widen_s = grow(replica_start_s=SLOW_COLD_START_S).widen_s
        assert widen_s is not None
        c = grow(replica_start_s=widen_s)
        assert c.growth == Growth.REPLICAS and "tie" in c.message

    def test_at_max_expert_only_replicas_remain(self) -> None:
        c = grow(width=4, max_width=4, replica_start_s=SLOW_COLD_START_S)
        assert c.growth == Growth.REPLICAS and c.widen_s is None and "maxExpert" in c.message

    def test_widens_only_as_far_as_the_capacity_needs(self) -> None:
        c = grow(replicas=2, wanted=3, replica_start_s=SLOW_COLD_START_S)
        assert c.growth == Growth.WIDEN
        need = 3 * rate(2)
        assert 2 * rate(c.width) >= need
        assert all(2 * rate(w) < need for w in range(3, c.width)), "the narrowest width that carries it"

    def test_a_need_no_width_up_to_max_expert_carries_takes_replicas(self) -> None:
        c = grow(replicas=1, wanted=2, max_width=3, replica_start_s=SLOW_COLD_START_S)
        assert rate(3) < 2 * rate(2), "the premise: EP 3 carries less than two EP 2 replicas"
        assert c.growth == Growth.REPLICAS and "no width up to maxExpert 3" in c.message

    def test_an_engine_without_elastic_ep_takes_replicas_and_says_why(self) -> None:
        why = "the engine has no /scale_elastic_ep (HTTP 404)"
        c = grow(unavailable=why, replica_start_s=SLOW_COLD_START_S)
        assert c.growth == Growth.REPLICAS and c.reason == Reason.ELASTIC_EP_UNAVAILABLE
        assert why in c.message and c.replicas == 2

    def test_a_widening_under_way_holds_the_replicas(self) -> None:
        c = grow(in_progress=True, replica_start_s=FAST_COLD_START_S)
        assert c.growth == Growth.WAIT and c.replicas == 1 and c.width == 2

    def test_no_replica_to_widen_takes_replicas(self) -> None:
        c = grow(replicas=0, wanted=1, replica_start_s=SLOW_COLD_START_S)
        assert c.growth == Growth.REPLICAS and c.replicas == 1

    def test_only_for_more_capacity(self) -> None:
        with pytest.raises(ValueError, match="more capacity"):
            grow(replicas=2, wanted=2)


class TestChooseNarrowing:
    def narrow(self, **kw: object) -> object:
        assert V2 is not None and H100 is not None
        args: dict[str, object] = {"replicas": 2, "wanted": 1, "width": 4, "base_width": 2}
        args.update(kw)
        return choose_narrowing(V2, H100, SLO_, **args)  # type: ignore[arg-type]

    def test_a_widened_service_wanting_less_narrows_to_the_narrowest_width_that_carries_it(self) -> None:
        n = self.narrow()
        assert isinstance(n, Narrowing)
        # Two replicas at EP 2 carry what one replica at EP 4 does: no need for EP 3.
        assert 2 * rate(2) >= rate(4) and n.width == 2
        assert "EP 4 -> 2" in n.message and "the replica count stays" in n.message

    def test_it_stops_at_the_first_width_that_carries_the_capacity(self) -> None:
        n = self.narrow(replicas=3, wanted=2, width=6)
        assert isinstance(n, Narrowing)
        need = 2 * rate(6)
        assert 3 * rate(n.width) >= need > 3 * rate(n.width - 1)

    def test_no_narrowing_when_no_narrower_width_carries_it_or_nothing_was_widened(self) -> None:
        assert 10 * rate(7) < 9 * rate(8)
        assert self.narrow(replicas=10, wanted=9, width=8, base_width=7) is None, "EP 7 carries too little"
        assert self.narrow(width=2) is None, "not widened"
        assert self.narrow(wanted=2) is None, "not smaller"
