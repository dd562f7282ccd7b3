"""Bad input, generated: a platform team's users will send every shape of spec, and the operator must survive all.

Hypothesis mutates valid LLMService, FineTuneJob and PowerBudget specs (a field set to a wrong type, a value out of
range, an unknown key, a field dropped) and sends each to the real API server with strict field validation, as
kubectl does. Every rejected object's error names the field at fault; every accepted one reconciles to a condition,
and the operator logs no exception meanwhile. The example counts are bounded (60 a kind, about 15 s on two cores);
the tally is printed (`-s` shows it)."""

from __future__ import annotations

import copy
import json
import time
import uuid
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes import client as kclient
from kubernetes import config as kconfig

from tests.integration.conftest import Proc
from tests.kube import Cluster

GROUP, VERSION = "ebbtide.dev", "v1alpha1"
EXAMPLES_PER_KIND = 60
# What an operator crash looks like in its log: kopf's retry of an unexpected exception, or a bare traceback.
CRASH_MARKERS = ("Traceback (most recent call last)", "failed with an exception")

BASES: dict[str, dict[str, Any]] = {
    "LLMService": {
        "model": {"name": "tiny-1b", "source": "hf://example/tiny-1b", "parametersB": 1},
        "engine": {"type": "simulated"},
        "gpu": {"count": 1, "types": ["L4"]},
        "replicas": 0,
        "scaling": {"minReplicas": 0, "maxReplicas": 2, "policy": "none"},
    },
    "FineTuneJob": {
        "baseModel": {"name": "tiny-1b", "source": "hf://example/tiny-1b", "parametersB": 1},
        "dataset": {"uri": "s3://datasets/d.jsonl"},
        "method": "lora",
        "hyperparameters": {"rank": 8, "totalSteps": 10},
        "gpu": {"count": 1, "types": ["L4"]},
        "trainer": {"type": "simulated", "stepSeconds": 0.2},
    },
    "PowerBudget": {
        "nodeSelector": {"ebbtide.dev/rack": "rack-fuzz"},
        "budgetWatts": 1000,
        "policy": {"order": "Proportional", "floorWattsPerGpu": 100, "hysteresisPercent": 5},
    },
}
PLURALS = {"LLMService": "llmservices", "FineTuneJob": "finetunejobs", "PowerBudget": "powerbudgets"}

# Values a field may be set to: the wrong types, the edges of numbers, strings that look like numbers or enums.
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.sampled_from([0, -1, 1, 2, 3, 7, 8, 16, 1000, 1001]),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.sampled_from([0.0, 0.5, 1.0, 1.5, -0.1, 1e9, 1e-9]),
    st.text(max_size=12),
    st.sampled_from(["", "H100", "L4", "moe", "dense", "vllm", "sglang", "forecast", "none", "lora", "full"]),
    st.lists(st.sampled_from(["H100", "A100", "L4", "", "B200", 3]), max_size=3),
    st.dictionaries(st.sampled_from(["a", "count", "name"]), st.integers(-2, 9), max_size=2),
)


# Values a user plausibly means: small counts, fractions, the enums' own words (these often pass the schema and
# reach the operator's own checks).
PLAUSIBLE = st.one_of(
    st.integers(min_value=0, max_value=20),
    st.sampled_from([0.0, 0.5, 0.9, 1.0, 2.0, 80.0]),
    st.booleans(),
    st.sampled_from(["H100", "A100", "L4", "moe", "dense", "vllm", "simulated", "forecast", "reactive", "lora"]),
)


def paths(spec: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key path in a spec (dicts only: lists are replaced whole)."""
    out: list[tuple[str, ...]] = []
    if isinstance(spec, dict):
        for k, v in spec.items():
            out.append((*prefix, k))
            out += paths(v, (*prefix, k))
    return out


# Fields a valid spec may also carry, so that mutations reach them too.
EXTRA_PATHS = {
    "LLMService": [("parallelism", "tensor"), ("parallelism", "pipeline"), ("parallelism", "expert"),
                   ("gpu", "perNode"), ("model", "architecture"), ("model", "experts"), ("roles", "prefill"),
                   ("scaling", "scaleToZero"), ("scaling", "forecastCoverage"), ("scaling", "slo", "ttftSeconds"),
                   ("engine", "port"), ("priorityClassName",), ("drainGracePeriodSeconds",)],
    "FineTuneJob": [("workers", "min"), ("workers", "max"), ("checkpoint", "intervalSeconds"), ("preemptible",),
                    ("output", "adapterName"), ("output", "publishTo"), ("hyperparameters", "learningRate")],
    "PowerBudget": [("policy", "exemptPriorityAbove"), ("nodeSelector", "zone")],
}  # fmt: skip


@st.composite
def mutated(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    """A valid base spec with one or two mutations: set a field, drop it, or add an unknown key."""
    spec = copy.deepcopy(BASES[kind])
    for _ in range(draw(st.integers(1, 2))):
        path = draw(st.sampled_from(paths(spec) + EXTRA_PATHS[kind]))
        action = draw(st.sampled_from(["set", "set", "set", "drop", "unknown"]))
        parent = spec
        for k in path[:-1]:
            if not isinstance(parent.get(k), dict):
                parent[k] = {}
            parent = parent[k]
        if action == "drop":
            parent.pop(path[-1], None)
        elif action == "unknown":
            parent[draw(st.sampled_from(["bogus", "Replicas", "gpus"]))] = draw(VALUES)
        else:
            parent[path[-1]] = draw(st.one_of(PLAUSIBLE, PLAUSIBLE, PLAUSIBLE, VALUES))
    return spec


def rejected_field(e: kclient.ApiException) -> str:
    """The field the API server's error names ('' when none): a 422 cause's field, or a spec path in the
    message of a 400 (a type the decoder refused)."""
    try:
        status = json.loads(e.body)
    except (TypeError, ValueError):
        return ""
    fields = [c.get("field", "") for c in (status.get("details") or {}).get("causes") or []]
    named = [f for f in fields if f.startswith("spec.") or f.startswith(".spec") or f.startswith("metadata.")]
    if named:
        return named[0]
    message = str(status.get("message", ""))
    return message if ".spec." in message or "spec." in message else ""


def test_generated_specs_are_rejected_naming_a_field_or_reconciled_to_a_condition(
    cluster: Cluster, ns: str, operator: Proc
) -> None:
    api = kclient.CustomObjectsApi(kconfig.new_client_from_config(config_file=str(cluster.kubeconfig)))
    log_start = operator.log.stat().st_size
    tally: Counter[str] = Counter()
    accepted: list[tuple[str, str]] = []
    unnamed: list[tuple[str, dict[str, Any], str]] = []
    reasons: Counter[str] = Counter()  # the first field each rejection names, for the tally

    def send(kind: str, spec: dict[str, Any]) -> None:
        name = f"fz-{uuid.uuid4().hex[:8]}"
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name}, "spec": spec}
        tally[f"{kind} tried"] += 1
        try:
            if kind == "PowerBudget":
                api.create_cluster_custom_object(GROUP, VERSION, PLURALS[kind], body, field_validation="Strict")
            else:
                api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURALS[kind], body, field_validation="Strict")
        except kclient.ApiException as e:
            assert e.status in (400, 422), f"{kind} {spec}: unexpected {e.status}: {e.body}"
            tally[f"{kind} rejected"] += 1
            named = rejected_field(e)
            reasons[named[:60]] += 1
            if not named:
                unnamed.append((kind, spec, str(e.body)[:300]))
            return
        tally[f"{kind} accepted"] += 1
        accepted.append((kind, name))

    def fuzz(kind: str) -> None:
        @settings(
            max_examples=EXAMPLES_PER_KIND,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        )
        @given(spec=mutated(kind))
        def one(spec: dict[str, Any]) -> None:
            send(kind, spec)

        one()

    for kind in BASES:
        fuzz(kind)

    try:

        def conditions(kind: str, name: str) -> list[dict[str, Any]]:
            if kind == "PowerBudget":
                obj = api.get_cluster_custom_object(GROUP, VERSION, PLURALS[kind], name)
            else:
                obj = api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURALS[kind], name)
            return list((obj.get("status") or {}).get("conditions") or [])

        def without_condition() -> list[tuple[str, str]]:
            return [(k, n) for k, n in accepted if not conditions(k, n)]

        left: list[tuple[str, str]] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            left = without_condition()
            if not left:
                break
            time.sleep(2)
        print(f"\nfuzz: {dict(sorted(tally.items()))}; accepted without a condition: {left}")
        print(f"fuzz: most named in rejections: {reasons.most_common(8)}")
        assert not unnamed, f"{len(unnamed)} rejections name no field, e.g. {unnamed[:3]}"
        assert not left, f"{len(left)} accepted objects never got a condition: {left[:5]}"
        with open(operator.log, "rb") as f:
            f.seek(log_start)
            text = f.read().decode(errors="replace")
        crashes = [line for line in text.splitlines() if any(m in line for m in CRASH_MARKERS)]
        assert not crashes, f"the operator logged {len(crashes)} exception(s), e.g. {crashes[:3]}"
        assert operator.alive()
    finally:
        for kind, name in accepted:
            if kind == "PowerBudget":
                api.delete_cluster_custom_object(GROUP, VERSION, PLURALS[kind], name)
