"""Simulated GPUs: the engine, load replay and the discrete-event cluster simulator."""
