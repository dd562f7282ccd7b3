"""Thin kopf shells: fetch from watch-fed state, translate to snapshots, call a core, apply the plan.

The only part of `controllers` that does I/O, always through `adapters`.
"""
