"""The operator's own Prometheus metrics."""

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter("ebbtide_reconciles_total", "Reconcile passes", ["kind", "result"])
RECONCILE_SECONDS = Histogram(
    "ebbtide_reconcile_duration_seconds",
    "Wall time of one reconcile pass",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
MANAGED = Gauge("ebbtide_managed_objects", "Objects the operator manages", ["kind"])
PODS_CREATED = Counter("ebbtide_pods_created_total", "Pods created", ["kind"])
PODS_DELETED = Counter("ebbtide_pods_deleted_total", "Pods deleted", ["kind", "reason"])
DESIRED_REPLICAS = Gauge("ebbtide_desired_replicas", "spec.replicas per LLMService", ["namespace", "service"])
READY_REPLICAS = Gauge("ebbtide_ready_replicas", "Ready replica gangs per LLMService", ["namespace", "service"])
SEMANTIC_ERRORS = Counter("ebbtide_invalid_objects_total", "Objects found semantically invalid", ["kind", "reason"])
