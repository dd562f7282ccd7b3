"""Benchmarks on real traces: baselines and Ebbtide side by side, tables and plots under bench/results/."""
