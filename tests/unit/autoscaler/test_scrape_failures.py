"""How failed metrics calls read to users: grouped by how the engines failed, with a pod, its URL and a hint."""

from __future__ import annotations

from autoscaler.observation import PodSample, ScrapeResult, aggregate_scrapes, describe_scrape_failures
from autoscaler.types import ScrapeFailure

URL = "http://10.0.0.{}:8000/metrics"


def test_failures_are_grouped_by_how_the_engines_failed_largest_group_first() -> None:
    failures = [
        ("b-1", ScrapeFailure(URL.format(2), 500, "HTTP 500 Internal Server Error")),
        ("a-0", ScrapeFailure(URL.format(1), 500, "HTTP 500 Internal Server Error")),
        ("c-2", ScrapeFailure(URL.format(3), None, "ConnectTimeout")),
        ("d-3", ScrapeFailure(URL.format(4), 200, "pod d-3: no vllm: or sglang: metrics in the exposition text")),
        ("e-4", ScrapeFailure(None, None, "pod e-4 has no IP yet")),
    ]
    assert describe_scrape_failures(failures, 6).split("; ") == [
        f"2/6 engines answered HTTP 500 on /metrics (pod a-0: GET {URL.format(1)} answered HTTP 500)",
        f"1/6 engines answered /metrics with no engine metrics (pod d-3: GET {URL.format(4)}: pod d-3: no vllm: or "
        "sglang: metrics in the exposition text)",
        f"1/6 engines did not answer on /metrics (pod c-2: GET {URL.format(3)}: ConnectTimeout)",
        "1/6 engines had no metrics URL (pod e-4: pod e-4 has no IP yet)",
    ]


def test_a_404_on_metrics_asks_whether_metrics_are_enabled() -> None:
    text = describe_scrape_failures([("s-0", ScrapeFailure(URL.format(1), 404, "HTTP 404 Not Found"))], 1)
    assert text.endswith(": is --enable-metrics set? (SGLang serves /metrics only with it)")
    other = describe_scrape_failures([("s-0", ScrapeFailure("http://gw/engine/s-0/stats", 404, "HTTP 404"))], 1)
    assert "enable-metrics" not in other and "on /engine/s-0/stats" in other


def test_the_observation_carries_every_failure_and_how_many_engines_were_asked() -> None:
    failure = ScrapeFailure(URL.format(2), 404, "HTTP 404 Not Found")
    prev = ScrapeResult(0.0, {"a": PodSample("a", 0.0)}, {"b": failure})
    cur = ScrapeResult(30.0, {"a": PodSample("a", 30.0)}, {"b": failure})
    obs = aggregate_scrapes("ns/s", prev, cur, replicas=2, ready_replicas=2)
    assert obs.engines_asked == 2 and obs.scrape_failures == (("b", failure),)
