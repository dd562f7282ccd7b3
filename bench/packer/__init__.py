"""Packer benchmark: Alibaba GPU trace replay (FGD-paper style), priority scenarios, decision latency."""
