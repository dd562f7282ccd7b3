"""The trainer's Prometheus metrics, the progress half of the checkpoint contract (docs/finetuning.md)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Gauge, start_http_server


class Metrics:
    """ebbtide_trainer_* gauges served on /metrics from a background thread."""

    def __init__(self, host: str, port: int) -> None:
        self.registry = CollectorRegistry()

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, registry=self.registry)

        self.step = gauge("ebbtide_trainer_step", "Optimizer steps completed.")
        self.total = gauge("ebbtide_trainer_total_steps", "Optimizer steps in the run.")
        self.checkpoint_step = gauge(
            "ebbtide_trainer_checkpoint_step", "Step of the latest complete checkpoint (-1: none yet)."
        )
        self.resumed_from = gauge("ebbtide_trainer_resumed_from_step", "Step this process resumed from (-1: fresh).")
        self.loss = gauge("ebbtide_trainer_loss", "Training loss of the last step.")
        self.done = gauge("ebbtide_trainer_done", "1 once every step ran and the adapter is written.")
        self.checkpoint_step.set(-1)
        self.resumed_from.set(-1)
        self.host, self.port = host, port
        self.server: Any = None

    def started(self, step: int, total: int, resumed_from: int | None) -> None:
        """Set the starting point, then serve: the first scrape already tells whether and where it resumed."""
        self.step.set(step)
        self.total.set(total)
        if resumed_from is not None:
            self.resumed_from.set(resumed_from)
            self.checkpoint_step.set(resumed_from)
        if self.port > 0 and self.server is None:
            self.server, self.thread = start_http_server(self.port, addr=self.host, registry=self.registry)

    def stepped(self, step: int, loss: float) -> None:
        self.step.set(step)
        self.loss.set(loss)

    def checkpointed(self, step: int) -> None:
        self.checkpoint_step.set(step)

    def finished(self) -> None:
        self.done.set(1)

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
