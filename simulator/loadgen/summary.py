"""Latency summaries and SLO attainment over per-request records (shared by load replay and the simulator).

A request meets the SLO when it succeeded, its time to first token is within `slo.ttft_s` and its mean
inter-token latency (time per output token after the first) is within `slo.itl_s`. Failed requests count as
misses, so attainment is over every request sent.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from autoscaler.types import SLO


def meets_slo(ttft: np.ndarray, itl: np.ndarray, ok: np.ndarray, slo: SLO) -> np.ndarray:
    """Boolean mask of requests meeting both latency targets (a request with one token has no ITL to miss)."""
    ttft_ok = np.nan_to_num(ttft, nan=np.inf) <= slo.ttft_s
    itl_ok = np.nan_to_num(itl, nan=0.0) <= slo.itl_s
    return ok & ttft_ok & itl_ok


def _q(values: np.ndarray, q: float) -> float:
    finite = values[np.isfinite(values)]
    return float(np.quantile(finite, q)) if len(finite) else math.nan


@dataclass(frozen=True)
class LatencySummary:
    """Counts, latency quantiles (seconds) and SLO attainment of a set of requests."""

    requests: int
    succeeded: int
    failed: int
    ttft_p50_s: float
    ttft_p90_s: float
    ttft_p99_s: float
    itl_p50_s: float
    itl_p90_s: float
    itl_p99_s: float
    e2e_p50_s: float
    e2e_p99_s: float
    slo_attainment: float  # share of all requests meeting both TTFT and ITL targets
    ttft_slo_s: float
    itl_slo_s: float

    @classmethod
    def from_arrays(
        cls, ttft: np.ndarray, itl: np.ndarray, e2e: np.ndarray, ok: np.ndarray, slo: SLO
    ) -> LatencySummary:
        """Summarise parallel per-request arrays (NaN where a latency is unknown)."""
        n = len(ok)
        good = meets_slo(ttft, itl, ok, slo)
        okv = ok.astype(bool)
        return cls(
            requests=n,
            succeeded=int(okv.sum()),
            failed=int(n - okv.sum()),
            ttft_p50_s=_q(ttft[okv], 0.50),
            ttft_p90_s=_q(ttft[okv], 0.90),
            ttft_p99_s=_q(ttft[okv], 0.99),
            itl_p50_s=_q(itl[okv], 0.50),
            itl_p90_s=_q(itl[okv], 0.90),
            itl_p99_s=_q(itl[okv], 0.99),
            e2e_p50_s=_q(e2e[okv], 0.50),
            e2e_p99_s=_q(e2e[okv], 0.99),
            slo_attainment=float(good.mean()) if n else math.nan,
            ttft_slo_s=slo.ttft_s,
            itl_slo_s=slo.itl_s,
        )

    def as_dict(self) -> dict[str, float | int]:
        """Plain dict for JSON output."""
        return asdict(self)

    def format(self) -> str:
        """A few human-readable lines."""
        ms = 1000.0
        return "\n".join(
            [
                f"requests {self.requests}  ok {self.succeeded}  failed {self.failed}",
                f"TTFT ms  p50 {self.ttft_p50_s * ms:.0f}  p90 {self.ttft_p90_s * ms:.0f}  "
                f"p99 {self.ttft_p99_s * ms:.0f}",
                f"ITL  ms  p50 {self.itl_p50_s * ms:.1f}  p90 {self.itl_p90_s * ms:.1f}  p99 {self.itl_p99_s * ms:.1f}",
                f"E2E  s   p50 {self.e2e_p50_s:.2f}  p99 {self.e2e_p99_s:.2f}",
                f"SLO attainment {self.slo_attainment:.2%} "
                f"(TTFT <= {self.ttft_slo_s:g} s and ITL <= {self.itl_slo_s * ms:g} ms)",
            ]
        )
