"""Engine command lines for vLLM, SGLang and the simulated engine, per pod role and rank."""

from __future__ import annotations

from dataclasses import dataclass

from controllers.planners.drain import shutdown_timeout_s
from crds.finetunejob import FineTuneJobSpec
from crds.llmservice import LLMServiceSpec

# vLLM >= 0.18 for --shutdown-timeout, without which SIGTERM aborts every request in flight (docs/engines.md).
DEFAULT_IMAGES = {
    "vllm": "vllm/vllm-openai:v0.32.0",
    "sglang": "lmsysorg/sglang:v0.5.23",
    "simulated": "ghcr.io/ebbtide/engine-sim:0.1.0",
    "peft": "ghcr.io/ebbtide/trainer-peft:0.1.0",
}


@dataclass(frozen=True)
class PodRole:
    """Where a pod sits in its replica gang."""

    role: str  # server | leader | worker | prefill | decode
    rank: int  # index within the role
    nodes: int  # pods of a multi-node replica (1 otherwise)
    leader_host: str | None = None  # DNS name of the leader pod for multi-node replicas


def model_uri_to_path(source: str) -> str:
    """What the engine's --model flag takes for a source URI: a HF id, a file:// path as is, or a mount path."""
    scheme, _, rest = source.partition("://")
    if scheme == "file":
        return "/" + rest.lstrip("/")
    return rest if scheme == "hf" else f"/models/{rest.strip('/')}"


def checkpoint_dir(spec: FineTuneJobSpec, job: str, namespace: str) -> str:
    """The job's folder in its checkpoint storage: checkpoints, the `latest` pointer and the adapter."""
    return f"{spec.checkpoint.storage.rstrip('/')}/{namespace}/{job}"


def adapter_uri(spec: FineTuneJobSpec, job: str, namespace: str) -> str:
    """Where the trainer writes the finished adapter (docs/finetuning.md): `adapter` in the job's folder."""
    return f"{checkpoint_dir(spec, job, namespace)}/adapter"


def lora_enabled(spec: LLMServiceSpec) -> bool:
    """Whether the engines serve LoRA adapters: some are listed, or `--enable-lora` is among the engine's args (a
    service that adapters will be published to at run time starts with it, so publishing needs no restart)."""
    return bool(spec.adapters) or "--enable-lora" in spec.engine.args


def _lora_args(spec: LLMServiceSpec) -> list[str]:
    args = [] if "--enable-lora" in spec.engine.args or not spec.adapters else ["--enable-lora"]
    if spec.adapters:
        args += ["--lora-modules", *(f"{a.name}={model_uri_to_path(a.source)}" for a in spec.adapters)]
    return args


def serving_command(spec: LLMServiceSpec, pod: PodRole) -> tuple[list[str], list[str]]:
    """(command, args) of one serving pod."""
    e, m, p = spec.engine, spec.model, spec.parallelism
    if e.type == "simulated":
        args = [
            "--model", m.name, "--params-b", _num(m.parameters_b), "--architecture", m.architecture,
            "--gpu", "auto", "--tensor-parallel", str(p.tensor), "--pipeline-parallel", str(p.pipeline),
            "--host", "0.0.0.0", "--port", str(e.port), "--served-model-name", m.name,
            "--shutdown-timeout", str(shutdown_timeout_s(spec.drain_grace_period_seconds)),
        ]  # fmt: skip
        if m.architecture == "moe":
            # In the API (as in vLLM) expert-parallel ranks reuse the tensor-parallel GPUs; the simulated engine
            # counts TP x EP GPUs, so it gets TP/EP x EP to model the same number of GPUs.
            tp = p.tensor // p.expert if p.expert > 1 and p.tensor % p.expert == 0 else p.tensor
            args[args.index("--tensor-parallel") + 1] = str(tp)
            args += ["--experts", str(m.experts), "--expert-parallel", str(p.expert if tp != p.tensor else 1)]
            if m.active_parameters_b is not None:
                args += ["--active-params-b", _num(m.active_parameters_b)]
            if p.elastic_expert:
                # The simulated engine's resize width is its expert-parallel degree.
                args += ["--enable-eplb", "--enable-elastic-ep", "--elastic-ep-max-dp-size", str(elastic_max(spec))]
        if spec.adapters:
            args += [
                "--enable-lora",
                "--lora-modules",
                *(f"{a.name}={model_uri_to_path(a.source)}" for a in spec.adapters),
            ]
        if pod.role in ("prefill", "decode"):
            args += ["--role", pod.role]
        return ["python", "-m", "simulator.engine"], args + list(e.args)
    model_path = model_uri_to_path(m.source)
    if e.type == "vllm":
        serve = [
            "vllm", "serve", model_path, "--served-model-name", m.name, "--host", "0.0.0.0", "--port", str(e.port),
            "--tensor-parallel-size", str(p.tensor), "--pipeline-parallel-size", str(p.pipeline),
            # SIGTERM then drains: in-flight requests finish, new ones are refused (the drain of scale-in).
            "--shutdown-timeout", str(shutdown_timeout_s(spec.drain_grace_period_seconds)),
        ]  # fmt: skip
        if p.data > 1:
            serve += ["--data-parallel-size", str(p.data)]
        if m.architecture == "moe" and (p.expert > 1 or p.elastic_expert):
            serve += ["--enable-expert-parallel"]
        if m.architecture == "moe" and p.elastic_expert:
            # vLLM's elastic EP resizes the data-parallel ranks (each of `tensor` GPUs); it needs EPLB and the Ray
            # data-parallel backend, whose cluster the joining rank pods join (0.32.0).
            max_dp = max(p.data, elastic_max(spec) // p.tensor)
            serve += ["--enable-eplb", "--enable-elastic-ep", "--elastic-ep-max-dp-size", str(max_dp)]
            serve += ["--data-parallel-backend", "ray"]
        serve += _lora_args(spec)
        if pod.role == "prefill":
            serve += ["--kv-transfer-config", '{"kv_connector":"NixlConnector","kv_role":"kv_producer"}']
        elif pod.role == "decode":
            serve += ["--kv-transfer-config", '{"kv_connector":"NixlConnector","kv_role":"kv_consumer"}']
        serve += list(e.args)
        if pod.nodes == 1 and not (m.architecture == "moe" and p.elastic_expert):
            return serve[:2], serve[2:]
        if pod.nodes == 1:
            return ["/bin/sh", "-c"], [f"ray start --head --port=6379 && {' '.join(serve)}"]
        # Multi-node vLLM runs on a Ray cluster: the leader heads it and serves; workers join and block.
        if pod.role == "leader":
            script = f"ray start --head --port=6379 && {' '.join(serve)}"
        else:
            script = f"ray start --address={pod.leader_host}:6379 --block"
        return ["/bin/sh", "-c"], [script]
    # SGLang serves /metrics only with --enable-metrics (the autoscaler reads its sglang: names). It has no
    # shutdown timeout: on SIGTERM it drains every request in flight by itself (0.5.x), and the pod's termination
    # grace period bounds that.
    args = [
        "--model-path", model_path, "--served-model-name", m.name, "--host", "0.0.0.0", "--port", str(e.port),
        "--tp-size", str(p.tensor), "--pp-size", str(p.pipeline), "--enable-metrics",
    ]  # fmt: skip
    if p.data > 1:
        args += ["--dp-size", str(p.data)]
    if m.architecture == "moe" and p.expert > 1:
        args += ["--ep-size", str(p.expert)]
    if m.architecture == "moe" and p.elastic_expert:
        # SGLang's elastic EP is switched on by naming its backend (mooncake, 0.5.x); it only grows.
        args += ["--elastic-ep-backend", "mooncake"]
    if pod.nodes > 1:
        rank = 0 if pod.role == "leader" else pod.rank + 1
        args += ["--nnodes", str(pod.nodes), "--node-rank", str(rank), "--dist-init-addr", f"{pod.leader_host}:5000"]
    if pod.role in ("prefill", "decode"):
        args += ["--disaggregation-mode", pod.role]
    return ["python3", "-m", "sglang.launch_server"], args + list(e.args)


def elastic_max(spec: LLMServiceSpec) -> int:
    """The widest expert-parallel degree a resize may reach: parallelism.maxExpert, else the current width."""
    p = spec.parallelism
    return max(p.expert, p.max_expert or p.expert)


def trainer_command(
    spec: FineTuneJobSpec, job: str, namespace: str, rank: int, workers: int
) -> tuple[list[str], list[str]]:
    """(command, args) of one fine-tuning worker. Either trainer resumes from the `latest` checkpoint in
    --checkpoint-dir by itself, so every attempt gets the same command line (docs/finetuning.md)."""
    t, h, c = spec.trainer, spec.hyperparameters, spec.checkpoint
    interval = ["--checkpoint-interval-steps", str(c.interval_steps)] if c.interval_steps else []
    if t.type == "simulated":
        args = [
            "--mode", "trainer", "--model", spec.base_model.name, "--params-b", _num(spec.base_model.parameters_b),
            "--gpu", "auto", "--host", "0.0.0.0", "--port", str(t.port), "--total-steps", str(h.total_steps),
            "--step-seconds", _num(t.step_seconds), "--checkpoint-dir", checkpoint_dir(spec, job, namespace),
            *interval, "--rank", str(rank),
        ]  # fmt: skip
        return ["python", "-m", "simulator.engine"], args + list(t.args)
    args = [
        "--base-model", model_uri_to_path(spec.base_model.source), "--dataset", spec.dataset.uri,
        "--method", spec.method, "--lora-rank", str(h.rank), "--lora-alpha", str(h.alpha),
        "--learning-rate", repr(h.learning_rate), "--batch-size", str(h.batch_size),
        "--max-steps", str(h.total_steps), "--checkpoint-dir", checkpoint_dir(spec, job, namespace),
        *interval, "--checkpoint-interval-seconds", str(c.interval_seconds),
        "--adapter-name", spec.output.adapter_name if spec.output else job,
        "--host", "0.0.0.0", "--port", str(t.port), "--rank", str(rank), "--world-size", str(workers),
    ]  # fmt: skip
    return ["python", "-m", "trainer"], args + list(t.args)


# The flags a trainer's failure message starts with (docs/finetuning.md), and the job's field each comes from.
TRAINER_FLAG_FIELDS = {
    "--base-model": "spec.baseModel.source",
    "--dataset": "spec.dataset.uri",
    "--checkpoint-dir": "spec.checkpoint.storage",
    "--method": "spec.method",
    "--lora-rank": "spec.hyperparameters.rank",
    "--world-size": "spec.workers.max",
}


def failed_field(message: str) -> str | None:
    """The job field a trainer's termination message blames ("--dataset: cannot read ..."), if it names one."""
    flag = message.split(":", 1)[0].strip()
    return TRAINER_FLAG_FIELDS.get(flag)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))
