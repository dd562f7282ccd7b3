"""The node agent's apply step over NVML's rules (milliwatts, per device, constraints, default restored), driven
through the simulated fleet's NVML, which must behave as the real one."""

from __future__ import annotations

import pytest

from adapters.nvml import CapApplier, NvmlError, parse_caps, render_caps, render_reports
from catalogue.gpus import GPU_PROFILES
from simulator.fleet.nvml import SimulatedNvml

H100 = GPU_PROFILES["NVIDIA-H100-80GB-HBM3"]


def node(count: int = 4, busy_w: float = 650.0) -> SimulatedNvml:
    return SimulatedNvml(H100, count, draw_w=lambda i: busy_w if i < 2 else H100.idle_w)


class TestSimulatedNvml:
    def test_speaks_milliwatts_within_the_boards_constraints(self) -> None:
        nvml = node()
        assert nvml.constraints_mw(0) == (200_000, 700_000)
        assert nvml.default_limit_mw(0) == nvml.enforced_limit_mw(0) == 700_000
        nvml.set_limit_mw(1, 350_000)
        assert nvml.enforced_limit_mw(1) == 350_000 and nvml.enforced_limit_mw(0) == 700_000
        with pytest.raises(NvmlError, match="Invalid Argument"):
            nvml.set_limit_mw(0, 150_000)
        with pytest.raises(NvmlError, match="Invalid Argument"):
            nvml.enforced_limit_mw(9)

    def test_draw_never_exceeds_the_enforced_limit_and_idle_gpus_are_cappable(self) -> None:
        nvml = node()
        nvml.set_limit_mw(0, 300_000)
        nvml.set_limit_mw(3, 250_000)  # idle
        assert nvml.power_usage_mw(0) == 300_000
        assert nvml.power_usage_mw(1) == 650_000
        assert nvml.power_usage_mw(3) == round(H100.idle_w * 1000)
        assert nvml.limit_w(3) == 250.0


class TestCapApplier:
    def test_applies_caps_reads_the_enforced_limit_back_and_restores_defaults(self) -> None:
        changes: list[tuple[int, float | None]] = []
        nvml = node()
        nvml.on_change = lambda i, w: changes.append((i, w))
        agent = CapApplier(nvml)
        reports = agent.apply({0: 350.0, 3: 200.0}, now=0.0)
        assert [(r.index, r.requested_mw, r.enforced_mw, r.error) for r in reports] == [
            (0, 350_000, 350_000, None),
            (1, None, 700_000, None),
            (2, None, 700_000, None),
            (3, 200_000, 200_000, None),
        ]
        assert changes == [(0, 350.0), (3, 200.0)]
        reports = agent.apply({}, now=1.0)  # caps lifted: every device back to its default limit
        assert {r.enforced_mw for r in reports} == {700_000}
        assert changes[-2:] == [(0, None), (3, None)]

    def test_a_refused_cap_is_reported_and_not_retried_hot(self) -> None:
        nvml = node()
        calls: list[int] = []
        real_set = nvml.set_limit_mw

        def counting(index: int, mw: int) -> None:
            calls.append(mw)
            real_set(index, mw)

        nvml.set_limit_mw = counting  # type: ignore[method-assign]
        agent = CapApplier(nvml, backoff_s=60.0)
        first = agent.apply({0: 100.0}, now=0.0)[0]
        assert first.error is not None and "[200000, 700000]" in first.error
        assert first.enforced_mw == 700_000
        again = agent.apply({0: 100.0}, now=5.0)[0]
        assert again.error == first.error
        assert calls == []  # refused before the call, and not re-tried within the backoff
        assert agent.apply({0: 300.0}, now=6.0)[0].error is None  # a new value is tried at once

    def test_nvml_refusing_a_set_is_reported_with_its_message(self) -> None:
        nvml = node()

        def refuse(index: int, mw: int) -> None:
            raise NvmlError(f"nvmlDeviceSetPowerManagementLimit(device {index}): Insufficient Permissions")

        nvml.set_limit_mw = refuse  # type: ignore[method-assign]
        report = CapApplier(nvml).apply({1: 400.0}, now=0.0)[1]
        assert report.error is not None and "Insufficient Permissions" in report.error
        assert report.enforced_mw == 700_000


class TestAnnotations:
    def test_caps_round_trip_and_malformed_entries_are_dropped(self) -> None:
        caps = {3: 250.0, 0: None}
        assert parse_caps(render_caps(caps)) == caps
        assert render_caps(caps) == '{"0":null,"3":250.0}'
        assert parse_caps('{"0": 300, "x": 1, "2": "hot"}') == {0: 300.0}
        assert parse_caps("not json") == {} and parse_caps(None) == {} and parse_caps("[1]") == {}

    def test_the_agents_answer_carries_enforced_watts_and_errors(self) -> None:
        reports = CapApplier(node(1)).apply({0: 100.0}, now=0.0)
        answer = render_reports(reports)
        assert '"enforcedW":700.0' in answer and "constraints" in answer
