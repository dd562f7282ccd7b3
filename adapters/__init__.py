"""Adapters: the only modules that talk to the outside world.

Kubernetes (the Kube facade), engines over HTTP (metrics scrape, admin calls), Redis (history), and the
operator's own Prometheus metrics. Each hides its library behind a small class so the shells and tests can swap
it; decision cores never import this package.
"""
