"""Workload traces as arrays of requests: Azure LLM 2023 replayed as is, ServeGen synthesized per window.

Pure data code (numpy only, no network). Arrival times are seconds relative to the trace start. Randomness
comes from an explicit seed so that a benchmark and its rerun see the same requests.

ServeGen windows carry a client's mean rate and the family and shape of its inter-arrival distribution
(`Gamma`: p1 = shape k, p2 = scale θ; `Weibull`: p1 = shape k, p2 = scale λ; the scipy parameterisation
ServeGen fits and samples with). Like ServeGen's own generator, each window's draws are rescaled to span
the window, so the family and shape set the burstiness and the rate sets the count; the scale cancels out.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np

DATA_ENV = "EBBTIDE_DATA"
AZURE_TRACES = ("azure-conv", "azure-code")
SERVEGEN_TRACES = ("servegen-m-mid",)
TRACE_NAMES = AZURE_TRACES + SERVEGEN_TRACES

_DIST_CODES = {"": 0, "Gamma": 1, "Weibull": 2}


# Small slices of the public traces that ship with the repository (simulator/data/README.md says which and
# how they were cut): the tests and the demo read these, so a plain clone needs nothing beside it.
SLICES = Path(__file__).resolve().parent / "data"


class TraceDataMissing(FileNotFoundError):
    """The full public traces were asked for but `$EBBTIDE_DATA` does not name a folder."""


def data_dir() -> Path:
    """The full public traces: the folder `$EBBTIDE_DATA` names (`make data` fetches them; README "Data")."""
    env = os.environ.get(DATA_ENV)
    if not env:
        raise TraceDataMissing(
            f"{DATA_ENV} is not set: the benchmarks read the full public traces from the folder it names. "
            f"Run `make data` to fetch them, then `export {DATA_ENV}=<that folder>` (README, section Data)."
        )
    path = Path(env)
    if not path.is_dir():
        raise TraceDataMissing(f"{DATA_ENV}={env} is not a folder; `make data` fetches the traces into one")
    return path


@dataclass(frozen=True)
class TraceRequest:
    """One request of a trace."""

    index: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class Trace:
    """Requests sorted by arrival: parallel arrays of arrival seconds, prompt and output token counts."""

    name: str
    arrival_s: np.ndarray  # float64, non-decreasing, seconds from the trace start
    prompt_tokens: np.ndarray  # int64, >= 1
    output_tokens: np.ndarray  # int64, >= 1
    duration_s: float  # span the trace covers (arrivals lie in [0, duration_s))

    def __post_init__(self) -> None:
        n = len(self.arrival_s)
        if len(self.prompt_tokens) != n or len(self.output_tokens) != n:
            raise ValueError("arrival_s, prompt_tokens and output_tokens must have the same length")

    def __len__(self) -> int:
        return len(self.arrival_s)

    def requests(self) -> Iterator[TraceRequest]:
        """Iterate the requests in arrival order."""
        for i in range(len(self)):
            yield TraceRequest(i, float(self.arrival_s[i]), int(self.prompt_tokens[i]), int(self.output_tokens[i]))

    def window(self, start_s: float, end_s: float) -> Trace:
        """The requests arriving in [start_s, end_s), re-based so that start_s becomes 0."""
        lo, hi = np.searchsorted(self.arrival_s, [start_s, end_s], side="left")
        return Trace(
            self.name,
            self.arrival_s[lo:hi] - start_s,
            self.prompt_tokens[lo:hi],
            self.output_tokens[lo:hi],
            max(0.0, min(end_s, self.duration_s) - start_s),
        )

    def compressed(self, factor: float) -> Trace:
        """The same requests played `factor` times faster (arrival gaps divided by factor)."""
        if factor <= 0:
            raise ValueError(f"compression factor must be positive, got {factor}")
        return Trace(
            self.name,
            self.arrival_s / factor,
            self.prompt_tokens,
            self.output_tokens,
            self.duration_s / factor,
        )

    def rate_series(self, bucket_s: float) -> RateSeries:
        """Requests per second in consecutive buckets of `bucket_s` seconds."""
        n_buckets = max(1, int(np.ceil(self.duration_s / bucket_s)))
        counts = np.bincount(
            np.minimum((self.arrival_s // bucket_s).astype(np.int64), n_buckets - 1), minlength=n_buckets
        )
        return RateSeries(self.name, bucket_s, counts / bucket_s)


@dataclass(frozen=True)
class RateSeries:
    """Mean request rate (requests/s) in consecutive buckets starting at t = 0."""

    name: str
    bucket_s: float
    rates: np.ndarray  # float64, one per bucket

    @property
    def duration_s(self) -> float:
        """Total span of the series."""
        return self.bucket_s * len(self.rates)

    def at(self, t: float) -> float:
        """Rate in force at time t (0 outside the series)."""
        i = int(t // self.bucket_s)
        return float(self.rates[i]) if 0 <= i < len(self.rates) else 0.0

    def mean_over(self, start_s: float, end_s: float) -> float:
        """Time-weighted mean rate over [start_s, end_s)."""
        if end_s <= start_s:
            return self.at(start_s)
        edges = np.arange(len(self.rates) + 1) * self.bucket_s
        cum = np.concatenate(([0.0], np.cumsum(self.rates * self.bucket_s)))
        area = np.interp(end_s, edges, cum) - np.interp(start_s, edges, cum)
        return float(area / (end_s - start_s))

    def scaled(self, factor: float) -> RateSeries:
        """The series with every rate multiplied by factor."""
        return RateSeries(self.name, self.bucket_s, self.rates * factor)


class LengthSampler:
    """Draws (prompt, output) token pairs jointly from an empirical table, keeping their correlation."""

    def __init__(self, prompt_tokens: np.ndarray, output_tokens: np.ndarray) -> None:
        if len(prompt_tokens) == 0 or len(prompt_tokens) != len(output_tokens):
            raise ValueError("a length table needs equally many (>0) prompt and output counts")
        self.prompt_tokens = np.maximum(np.asarray(prompt_tokens, dtype=np.int64), 1)
        self.output_tokens = np.maximum(np.asarray(output_tokens, dtype=np.int64), 1)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """n (prompt, output) pairs drawn with replacement."""
        idx = rng.integers(0, len(self.prompt_tokens), size=n)
        return self.prompt_tokens[idx], self.output_tokens[idx]

    @property
    def mean_prompt(self) -> float:
        """Mean prompt length of the table."""
        return float(self.prompt_tokens.mean())

    @property
    def mean_output(self) -> float:
        """Mean output length of the table."""
        return float(self.output_tokens.mean())


def _seconds_of(timestamp: str, day0: date) -> float:
    """Seconds since midnight of day0 for 'YYYY-MM-DD HH:MM:SS.fffffff' (7 fractional digits)."""
    day, clock = timestamp.strip().split(" ")
    y, mo, d = (int(x) for x in day.split("-"))
    hh, mm, ss = clock.split(":")
    days = (date(y, mo, d) - day0).days
    return days * 86400.0 + int(hh) * 3600.0 + int(mm) * 60.0 + float(ss)


def load_azure(kind: str = "conv", root: Path | None = None) -> Trace:
    """The Azure LLM inference trace 2023 (`kind` "conv" or "code"), arrivals from the first request."""
    if kind not in ("conv", "code"):
        raise ValueError(f"unknown Azure trace kind {kind!r}; expected 'conv' or 'code'")
    path = (root or data_dir()) / "azure-llm-2023" / f"AzureLLMInferenceTrace_{kind}.csv"
    times: list[float] = []
    prompts: list[int] = []
    outputs: list[int] = []
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        if [h.strip() for h in header[:3]] != ["TIMESTAMP", "ContextTokens", "GeneratedTokens"]:
            raise ValueError(f"{path.name}: unexpected header {header}")
        day0: date | None = None
        for row in reader:
            if not row:
                continue
            if day0 is None:
                day0 = date.fromisoformat(row[0].strip()[:10])
            times.append(_seconds_of(row[0], day0))
            prompts.append(int(row[1]))
            outputs.append(int(row[2]))
    arrival = np.asarray(times, dtype=np.float64)
    order = np.argsort(arrival, kind="stable")
    arrival = arrival[order] - arrival[order][0]
    return Trace(
        f"azure-{kind}",
        arrival,
        np.maximum(np.asarray(prompts, dtype=np.int64)[order], 1),
        np.maximum(np.asarray(outputs, dtype=np.int64)[order], 1),
        float(arrival[-1]) + 1e-6 if len(arrival) else 0.0,
    )


def azure_length_sampler(kind: str = "conv", root: Path | None = None) -> LengthSampler:
    """Empirical (prompt, output) lengths of an Azure trace, for traces that carry no lengths."""
    trace = load_azure(kind, root)
    return LengthSampler(trace.prompt_tokens, trace.output_tokens)


@dataclass(frozen=True)
class ServeGenTrace:
    """A ServeGen per-client window table: rate and inter-arrival shape per client per window."""

    name: str
    window_s: float
    clients: tuple[str, ...]
    rate_rps: np.ndarray  # (clients, windows) mean request rate of the client in the window
    dist: np.ndarray  # (clients, windows) int8: 0 none, 1 Gamma, 2 Weibull
    shape: np.ndarray  # (clients, windows) shape parameter (p1) of the inter-arrival distribution

    @property
    def n_windows(self) -> int:
        """Number of windows in the table."""
        return int(self.rate_rps.shape[1])

    @property
    def duration_s(self) -> float:
        """Span of the table."""
        return self.window_s * self.n_windows

    def rate_series(self, rate_scale: float = 1.0) -> RateSeries:
        """Aggregate rate of all clients per window, times rate_scale (no sampling: fast over 14 days)."""
        return RateSeries(self.name, self.window_s, self.rate_rps.sum(axis=0) * rate_scale)

    def synthesize(
        self,
        start_s: float,
        end_s: float,
        *,
        seed: int,
        rate_scale: float = 1.0,
        lengths: LengthSampler | None = None,
    ) -> Trace:
        """Arrivals of all clients in [start_s, end_s), aggregated into one service, re-based to start_s.

        Each (client, window) is drawn from its own generator derived from (seed, client, window), so a
        window's arrivals do not depend on which span was asked for. rate_scale multiplies every client's
        rate (counts use unbiased stochastic rounding). Lengths come from `lengths` (default Azure conv).
        """
        if end_s <= start_s:
            raise ValueError("end_s must be after start_s")
        w0 = max(0, int(start_s // self.window_s))
        w1 = min(self.n_windows, int(np.ceil(end_s / self.window_s)))
        chunks: list[np.ndarray] = []
        for w in range(w0, w1):
            arrivals = self._window_arrivals(w, seed, rate_scale)
            if len(arrivals):
                chunks.append(arrivals)
        arrival = np.sort(np.concatenate(chunks)) if chunks else np.zeros(0)
        arrival = arrival[(arrival >= start_s) & (arrival < end_s)] - start_s
        sampler = lengths or azure_length_sampler("conv")
        prompt, output = sampler.sample(len(arrival), np.random.default_rng([seed, 0x1E7, w0]))
        return Trace(self.name, arrival, prompt, output, end_s - start_s)

    def synthesize_chunks(
        self,
        start_s: float,
        end_s: float,
        *,
        seed: int,
        chunk_s: float = 3600.0,
        rate_scale: float = 1.0,
        lengths: LengthSampler | None = None,
    ) -> Iterator[tuple[float, Trace]]:
        """Yield (chunk start, chunk trace) over [start_s, end_s) to keep memory bounded over days."""
        t = start_s
        while t < end_s:
            t1 = min(end_s, t + chunk_s)
            yield t, self.synthesize(t, t1, seed=seed, rate_scale=rate_scale, lengths=lengths)
            t = t1

    def _window_arrivals(self, w: int, seed: int, rate_scale: float) -> np.ndarray:
        """Absolute arrival times of every client in window w."""
        rates = self.rate_rps[:, w] * rate_scale
        active = np.nonzero((rates > 0) & (self.dist[:, w] > 0))[0]
        if len(active) == 0:
            return np.zeros(0)
        rng = np.random.default_rng([seed, w])
        expected = rates[active] * self.window_s
        counts = np.floor(expected).astype(np.int64)
        counts += rng.random(len(active)) < (expected - counts)
        keep = counts > 0
        active, counts = active[keep], counts[keep]
        if len(active) == 0:
            return np.zeros(0)
        # n arrivals need n + 1 gaps (the last gap runs to the window end) so the window is spanned exactly
        gaps_per = counts + 1
        shapes = np.repeat(self.shape[active, w], gaps_per)
        fams = np.repeat(self.dist[active, w], gaps_per)
        gaps = np.empty(len(shapes))
        is_gamma = fams == 1
        gaps[is_gamma] = rng.gamma(shapes[is_gamma])
        gaps[~is_gamma] = rng.weibull(shapes[~is_gamma])
        # Very small shapes underflow to 0 gaps; a floor keeps every segment's total positive
        gaps = np.maximum(gaps, 1e-300)
        starts = np.concatenate(([0], np.cumsum(gaps_per)[:-1]))
        totals = np.add.reduceat(gaps, starts)
        seg = np.repeat(np.arange(len(active)), gaps_per)
        cum = np.cumsum(gaps)
        before = np.concatenate(([0.0], cum[starts[1:] - 1]))
        within = (cum - before[seg]) / totals[seg] * self.window_s
        last = np.cumsum(gaps_per) - 1
        mask = np.ones(len(gaps), dtype=bool)
        mask[last] = False
        return w * self.window_s + within[mask]


def load_servegen(model: str = "m-mid", root: Path | None = None) -> ServeGenTrace:
    """Read every `chunk-*-trace.csv` of a ServeGen language model folder into one window table."""
    folder = (root or data_dir()) / "servegen" / model
    files = sorted(folder.glob("chunk-*-trace.csv"), key=lambda p: int(p.name.split("-")[1]))
    if not files:
        raise FileNotFoundError(f"no chunk-*-trace.csv files under {folder}")
    starts: np.ndarray | None = None
    rates: list[np.ndarray] = []
    dists: list[np.ndarray] = []
    shapes: list[np.ndarray] = []
    for f in files:
        rows = [line.rstrip("\n").split(",") for line in f.open() if line.strip()]
        s = np.array([float(r[0]) for r in rows])
        if starts is None:
            starts = s
        elif len(s) != len(starts) or not np.array_equal(s, starts):
            raise ValueError(f"{f.name}: windows differ from the other clients'")
        rates.append(np.array([float(r[1]) for r in rows]))
        try:
            dists.append(np.array([_DIST_CODES[r[3]] for r in rows], dtype=np.int8))
        except KeyError as exc:
            raise ValueError(f"{f.name}: unknown inter-arrival distribution {exc.args[0]!r}") from None
        shapes.append(np.array([float(r[4]) if r[4] else 0.0 for r in rows]))
    assert starts is not None
    window_s = float(starts[1] - starts[0]) if len(starts) > 1 else 600.0
    return ServeGenTrace(
        f"servegen-{model}",
        window_s,
        tuple(f.name.removesuffix("-trace.csv") for f in files),
        np.vstack(rates),
        np.vstack(dists),
        np.vstack(shapes),
    )


def load_trace(
    name: str,
    *,
    seed: int = 0,
    start_s: float = 0.0,
    duration_s: float | None = None,
    rate_scale: float = 1.0,
    root: Path | None = None,
) -> Trace:
    """A request trace by CLI name: `azure-conv`, `azure-code` or `servegen-m-mid` (synthesized, seeded)."""
    if name in AZURE_TRACES:
        trace = load_azure(name.split("-", 1)[1], root)
        end = trace.duration_s if duration_s is None else start_s + duration_s
        return trace.window(start_s, end)
    if name in SERVEGEN_TRACES:
        table = load_servegen(name.split("-", 1)[1], root)
        end = table.duration_s if duration_s is None else start_s + duration_s
        lengths = azure_length_sampler("conv", root)
        return table.synthesize(start_s, end, seed=seed, rate_scale=rate_scale, lengths=lengths)
    raise ValueError(f"unknown trace {name!r}; expected one of {', '.join(TRACE_NAMES)}")
