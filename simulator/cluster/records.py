"""Per-request records of a simulation, and their running aggregate for runs too long to keep every request.

`RequestLog` stores inputs and outcomes in compact arrays addressed by a slot number. Unbounded, slot ==
request number and everything is kept. With a capacity it is a ring: before a slot is reused, the finished
request in it is folded into an `OutcomeAccumulator` (SLO counts, log-spaced latency histograms, attainment
per arrival bucket), so a 14-day run needs memory for hours of requests, not days.
"""

from __future__ import annotations

import math
from array import array

import numpy as np

from autoscaler.types import SLO
from simulator.loadgen.summary import LatencySummary, meets_slo

# Histogram edges for latencies: 100 bins per decade from 0.1 ms to 100,000 s (quantiles within ~2.3%)
_EDGES = np.logspace(-4, 5, 901)


class OutcomeAccumulator:
    """Counts, SLO attainment and latency histograms of folded requests (arrival-time buckets too)."""

    def __init__(self, slo: SLO, bucket_s: float = 3600.0, measure_from_s: float = 0.0) -> None:
        self.slo = slo
        self.bucket_s = bucket_s
        self.measure_from_s = measure_from_s  # requests arriving earlier are warm-up and not counted
        self.requests = 0
        self.succeeded = 0
        self.good = 0
        self.hist = {k: np.zeros(len(_EDGES) + 1, dtype=np.int64) for k in ("ttft", "itl", "e2e")}
        self.bucket_requests = np.zeros(0, dtype=np.int64)
        self.bucket_good = np.zeros(0, dtype=np.int64)

    def add(
        self, arrival: np.ndarray, output: np.ndarray, first: np.ndarray, finish: np.ndarray, status: np.ndarray
    ) -> None:
        """Fold a batch of finished (or failed) requests (warm-up arrivals are dropped)."""
        if self.measure_from_s > 0:
            keep = arrival >= self.measure_from_s
            arrival, output, first, finish, status = (a[keep] for a in (arrival, output, first, finish, status))
        if len(arrival) == 0:
            return
        ok = status == RequestLog.OK
        ttft = first - arrival
        e2e = finish - arrival
        gen = output - 1
        with np.errstate(invalid="ignore", divide="ignore"):
            itl = np.where(gen > 0, (finish - first) / np.maximum(gen, 1), np.nan)
        good = meets_slo(ttft, itl, ok, self.slo)
        self.requests += len(arrival)
        self.succeeded += int(ok.sum())
        self.good += int(good.sum())
        for name, values in (("ttft", ttft), ("itl", itl), ("e2e", e2e)):
            v = values[ok & np.isfinite(values)]
            self.hist[name] += np.bincount(np.searchsorted(_EDGES, v), minlength=len(_EDGES) + 1)
        idx = np.maximum(0, ((arrival - self.measure_from_s) // self.bucket_s).astype(np.int64))
        n_buckets = int(idx.max()) + 1
        if n_buckets > len(self.bucket_requests):
            grow = n_buckets - len(self.bucket_requests)
            self.bucket_requests = np.concatenate([self.bucket_requests, np.zeros(grow, dtype=np.int64)])
            self.bucket_good = np.concatenate([self.bucket_good, np.zeros(grow, dtype=np.int64)])
        self.bucket_requests += np.bincount(idx, minlength=len(self.bucket_requests))
        self.bucket_good += np.bincount(idx, weights=good, minlength=len(self.bucket_good)).astype(np.int64)

    def quantile(self, name: str, q: float) -> float:
        """Approximate quantile of a latency ('ttft', 'itl', 'e2e') from its histogram (bin geometric mid)."""
        h = self.hist[name]
        total = int(h.sum())
        if total == 0:
            return math.nan
        i = int(np.searchsorted(np.cumsum(h), q * total, side="left"))
        lo = _EDGES[max(0, i - 1)]
        hi = _EDGES[min(len(_EDGES) - 1, i)]
        return float(math.sqrt(lo * hi))

    def summary(self) -> LatencySummary:
        """The accumulated LatencySummary (quantiles approximate)."""
        q = self.quantile
        return LatencySummary(
            requests=self.requests,
            succeeded=self.succeeded,
            failed=self.requests - self.succeeded,
            ttft_p50_s=q("ttft", 0.5),
            ttft_p90_s=q("ttft", 0.9),
            ttft_p99_s=q("ttft", 0.99),
            itl_p50_s=q("itl", 0.5),
            itl_p90_s=q("itl", 0.9),
            itl_p99_s=q("itl", 0.99),
            e2e_p50_s=q("e2e", 0.5),
            e2e_p99_s=q("e2e", 0.99),
            slo_attainment=self.good / self.requests if self.requests else math.nan,
            ttft_slo_s=self.slo.ttft_s,
            itl_slo_s=self.slo.itl_s,
        )

    def attainment_series(self) -> np.ndarray:
        """SLO attainment per arrival bucket counted from measure_from_s (NaN where no request arrived)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.bucket_requests > 0, self.bucket_good / np.maximum(self.bucket_requests, 1), np.nan)


class LogCapacityError(RuntimeError):
    """A ring slot was needed while its request was still in flight."""


class RequestLog:
    """Per-request inputs and outcomes in compact arrays, addressed by slot (see the module docstring)."""

    PENDING, OK, FAILED = 0, 1, 2

    def __init__(
        self, slo: SLO, capacity: int | None = None, bucket_s: float = 3600.0, measure_from_s: float = 0.0
    ) -> None:
        if capacity is not None and capacity < 1:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self.accumulator = OutcomeAccumulator(slo, bucket_s, measure_from_s)
        self.preemptions = 0
        self.total = 0  # requests ever added
        self._folded = 0  # requests (in arrival order) already folded into the accumulator
        size = capacity or 0
        self.arrival = array("d", bytes(8 * size))
        self.prompt = array("q", bytes(8 * size))
        self.output = array("q", bytes(8 * size))
        self.first_token = array("d", bytes(8 * size))  # virtual time of the first token, NaN until then
        self.finish = array("d", bytes(8 * size))  # virtual time of the end, NaN until then
        self.replica = array("q", bytes(8 * size))  # replica that served it, -1 if none
        self.status = array("b", bytes(size))

    @property
    def ring(self) -> bool:
        """Whether slots are reused (bounded memory)."""
        return self.capacity is not None

    def slot(self, number: int) -> int:
        """Slot of the request with this arrival number."""
        return number % self.capacity if self.capacity is not None else number

    def _views(self) -> dict[str, np.ndarray]:
        return {
            "arrival": np.frombuffer(self.arrival, dtype=np.float64),
            "prompt": np.frombuffer(self.prompt, dtype=np.int64),
            "output": np.frombuffer(self.output, dtype=np.int64),
            "first_token": np.frombuffer(self.first_token, dtype=np.float64),
            "finish": np.frombuffer(self.finish, dtype=np.float64),
            "replica": np.frombuffer(self.replica, dtype=np.int64),
            "status": np.frombuffer(self.status, dtype=np.int8),
        }

    def extend(self, arrival: np.ndarray, prompt: np.ndarray, output: np.ndarray) -> int:
        """Add requests in arrival order; returns the arrival number of the first (slot via `slot`)."""
        n = len(arrival)
        start = self.total
        if self.capacity is None:
            self.arrival.frombytes(np.ascontiguousarray(arrival, dtype=np.float64).tobytes())
            self.prompt.frombytes(np.ascontiguousarray(prompt, dtype=np.int64).tobytes())
            self.output.frombytes(np.ascontiguousarray(output, dtype=np.int64).tobytes())
            self.first_token.frombytes(np.full(n, np.nan).tobytes())
            self.finish.frombytes(np.full(n, np.nan).tobytes())
            self.replica.frombytes(np.full(n, -1, dtype=np.int64).tobytes())
            self.status.frombytes(np.zeros(n, dtype=np.int8).tobytes())
        else:
            if n > self.capacity:
                raise LogCapacityError(f"{n} requests in one chunk exceed the log capacity {self.capacity}")
            self._fold_until(start + n - self.capacity)
            slots = (start + np.arange(n)) % self.capacity
            v = self._views()
            v["arrival"][slots] = arrival
            v["prompt"][slots] = prompt
            v["output"][slots] = output
            v["first_token"][slots] = np.nan
            v["finish"][slots] = np.nan
            v["replica"][slots] = -1
            v["status"][slots] = self.PENDING
        self.total += n
        return start

    def _fold_until(self, number: int) -> None:
        """Fold every request with arrival number < `number` into the accumulator."""
        end = min(number, self.total)
        if end <= self._folded:
            return
        numbers = np.arange(self._folded, end)
        slots = numbers % self.capacity if self.capacity is not None else numbers
        v = self._views()
        status = v["status"][slots]
        if np.any(status == self.PENDING):
            raise LogCapacityError("a request is still in flight in a slot about to be reused; raise the log capacity")
        self.accumulator.add(
            v["arrival"][slots], v["output"][slots], v["first_token"][slots], v["finish"][slots], status
        )
        self._folded = end

    def finalize(self) -> None:
        """Mark everything still pending as failed and fold all requests."""
        status = np.frombuffer(self.status, dtype=np.int8)
        status[status == self.PENDING] = self.FAILED
        self._fold_until(self.total)

    def arrays(self) -> dict[str, np.ndarray] | None:
        """Copies of all per-request arrays in arrival order, or None when the ring dropped some."""
        if self.capacity is not None and self.total > self.capacity:
            return None
        return {k: v[: self.total].copy() for k, v in self._views().items()}
