"""Label and annotation keys Ebbtide puts on the objects it owns: the contract with the packer and fleet."""

SERVICE = "ebbtide.dev/service"
FINETUNE = "ebbtide.dev/finetune"
REPLICA = "ebbtide.dev/replica"
ROLE = "ebbtide.dev/role"
RANK = "ebbtide.dev/rank"
GANG = "ebbtide.dev/gang"
ATTEMPT = "ebbtide.dev/attempt"
ENGINE = "ebbtide.dev/engine"
ENTRYPOINT = "ebbtide.dev/entrypoint"  # "true" on pods that take client traffic (the Service selects it)
TEMPLATE_HASH = "ebbtide.dev/template-hash"
MANAGED_BY = "app.kubernetes.io/managed-by"

GANG_SIZE = "ebbtide.dev/gang-size"  # annotation: pods in the gang, for all-or-nothing placement
GPU_PRODUCT = "ebbtide.dev/gpu-product"  # annotation set by the packer at bind time: the node's GPU product
ENGINE_URL = "ebbtide.dev/engine-url"  # annotation set by the simulated fleet (or a sidecar) on each pod
DRAIN_STARTED = "ebbtide.dev/drain-started"  # annotation: epoch seconds when scale-in began draining the gang
PREEMPT = "ebbtide.dev/preempt"  # annotation on a FineTuneJob: a preemption was requested (reason)
PREEMPT_DEADLINE = "ebbtide.dev/preempt-deadline"  # annotation: epoch seconds after which eviction proceeds
CHECKPOINT_CONFIRMED = "ebbtide.dev/checkpoint-confirmed"  # annotation: step confirmed for the request
EXPERT_WIDTH = "ebbtide.dev/expert-width"  # annotation on an elastic MoE entry pod: the EP width its engine runs at
RESCALE = "ebbtide.dev/rescale"  # annotation on that pod: the width-change operation under way (JSON)
EP_RANK_ROLE = "ep-rank"  # ROLE of a rank pod that joined a running replica by an in-place width change
# annotation on an LLMService: the EP width the autoscaler widened from (undone when the widening fails)
AUTOSCALED_FROM_EXPERT = "ebbtide.dev/autoscaled-from-expert"

OPERATOR = "ebbtide"
