"""The simulated fleet: makes KWOK pods behave like engines, and fake GPU nodes like DCGM-exported GPUs.

One process acts as the kubelet of every fake GPU node for pods labelled `ebbtide.dev/engine=simulated`:
it runs the pod's own command line as an in-process simulated engine, reports the pod's status, and serves a
DCGM-exporter-compatible `/metrics` per node.
"""
