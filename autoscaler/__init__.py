"""Forecasting autoscaler: metrics, history, forecasts, capacity and replica decisions.

Decision modules (forecast, capacity, decide, policies) are pure: no Kubernetes, network or wall clock.
"""
