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
# kopf keeps no queue of its own to measure; these two are the reconcile queue as a user sees it.
BACKLOG = Gauge(
    "ebbtide_reconcile_backlog",
    "Objects whose current spec no reconcile has reported yet (status.observedGeneration behind generation)",
    ["kind"],
)
# The operator's own share of apiserver_request_total, which does not say who sent a request. kopf's own requests
# (its watches, the peering keep-alive, handler progress annotations) are not in it.
API_REQUESTS = Counter(
    "ebbtide_api_requests_total",
    "Kubernetes API requests the operator sent (lists and watches begun)",
    ["verb", "resource"],
)
IN_FLIGHT = Gauge("ebbtide_reconciles_in_flight", "Reconcile passes running now", ["kind"])
PODS_CREATED = Counter("ebbtide_pods_created_total", "Pods created", ["kind"])
PODS_DELETED = Counter("ebbtide_pods_deleted_total", "Pods deleted", ["kind", "reason"])
DESIRED_REPLICAS = Gauge("ebbtide_desired_replicas", "spec.replicas per LLMService", ["namespace", "service"])
READY_REPLICAS = Gauge("ebbtide_ready_replicas", "Ready replica gangs per LLMService", ["namespace", "service"])
SEMANTIC_ERRORS = Counter("ebbtide_invalid_objects_total", "Objects found semantically invalid", ["kind", "reason"])
AUTOSCALER_DECISIONS = Counter("ebbtide_autoscaler_decisions_total", "Autoscaler decisions", ["policy", "result"])
FORECAST_RPS_FOR = Gauge(
    "ebbtide_forecast_requests_per_second",
    "Forecast peak request rate over the lead time",
    ["namespace", "service", "quantile"],
)
OBSERVED_RPS_FOR = Gauge(
    "ebbtide_observed_requests_per_second", "Observed request rate over the last interval", ["namespace", "service"]
)
CLUSTER_FORECAST = Gauge(
    "ebbtide_cluster_forecast",
    "Forecast peak of the whole cluster's demand over the longest lead time (the sum of every autoscaled service)",
    ["indicator", "quantile"],
)
CLUSTER_OBSERVED = Gauge("ebbtide_cluster_observed", "The whole cluster's demand over the last interval", ["indicator"])
CLUSTER_SERVICES = Gauge("ebbtide_cluster_forecast_services", "Services summed into the cluster forecast")

# SLO, power and placement series the Grafana dashboard (helm/ebbtide/dashboards) plots next to the autoscaler's;
# the controllers and cores that own each figure set them.
SLO_TTFT = Gauge("ebbtide_slo_ttft_seconds", "spec.scaling.slo.ttftSeconds per LLMService", ["namespace", "service"])
SLO_ITL = Gauge(
    "ebbtide_slo_itl_seconds", "spec.scaling.slo.interTokenLatencySeconds per LLMService", ["namespace", "service"]
)
POWER_BUDGET = Gauge("ebbtide_power_budget_watts", "spec.budgetWatts per PowerBudget", ["budget"])
POWER_DRAWN = Gauge("ebbtide_power_drawn_watts", "Measured draw (DCGM) per PowerBudget", ["budget"])
POWER_FORECAST = Gauge("ebbtide_power_forecast_watts", "Forecast draw under the caps per PowerBudget", ["budget"])
POWER_HEADROOM = Gauge("ebbtide_power_headroom_watts", "Budget minus max(drawn, forecast)", ["budget"])
POWER_OVER_SECONDS = Gauge("ebbtide_power_seconds_over_budget", "Seconds measured draw has been over", ["budget"])
POWER_CAP = Gauge(
    "ebbtide_power_cap_watts", "Per-GPU cap in force by workload priority (0 = uncapped)", ["node", "gpu", "priority"]
)
POWER_CAP_CHANGES = Counter("ebbtide_power_cap_changes_total", "Per-GPU cap changes written for node agents")
PREEMPTIONS = Counter("ebbtide_preemptions_total", "Gangs preempted to make room", ["namespace", "kind"])
PENDING_GANGS = Gauge(
    "ebbtide_pending_gangs", "Gangs waiting for placement, by PriorityClass", ["namespace", "priority_class"]
)
BIND_SECONDS = Histogram(
    "ebbtide_packer_bind_duration_seconds",
    "Time to bind every pod of one gang",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
PACKER_DECISION_SECONDS = Histogram(
    "ebbtide_packer_decision_duration_seconds",
    "Wall time of one packer decision over the cluster snapshot",
    buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2),
)
SOLVER_RUNS = Counter("ebbtide_packer_solver_runs_total", "CP-SAT runs by status", ["status"])
PREEMPTIONS_BY_REASON = Counter("ebbtide_packer_preemptions_by_reason_total", "Preemptions by handling", ["reason"])
