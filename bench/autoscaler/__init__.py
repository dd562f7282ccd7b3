"""Autoscaler benchmark on ServeGen m-mid and Azure LLM 2023 traces: `python -m bench.autoscaler [--quick]`.

`speed` measures the cluster simulator alone: `python -m bench.autoscaler.speed` (24 h of m-mid).
"""
