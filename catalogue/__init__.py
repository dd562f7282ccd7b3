"""The catalogue: GPUs, models and the performance and power model, in one place.

Pure data and arithmetic, no I/O. Validation, the autoscaler's capacity seed and the simulator all ask this
package whether a model fits and how fast it runs, so they cannot disagree. Imports only `crds`.
"""
