"""How often the simulated router picks each expert: a seeded, skewed popularity per model.

Real routers favour some experts (EPLB exists because of it). The simulator draws each expert's share from a
Zipf-like law over a seeded permutation, so the hot experts differ between seeds but a run is reproducible.
"""

from __future__ import annotations

import numpy as np


def expert_popularity(experts: int, skew: float, seed: int) -> np.ndarray:
    """Each expert's share of routed tokens (sums to 1); skew 0 is uniform, larger is more skewed."""
    if experts < 1:
        raise ValueError(f"experts must be positive, got {experts}")
    if skew < 0:
        raise ValueError(f"skew must not be negative, got {skew}")
    weights = 1.0 / np.arange(1, experts + 1, dtype=float) ** skew
    order = np.random.default_rng(seed).permutation(experts)
    share = np.empty(experts)
    share[order] = weights / weights.sum()
    return share


def route_tokens(share: np.ndarray, tokens: int, layers: int, top_k: int, rng: np.random.Generator) -> np.ndarray:
    """Expert ids each token picks in each MoE layer: shape (tokens, layers, top_k), distinct within a token."""
    experts = share.shape[0]
    k = min(top_k, experts)
    # Gumbel top-k draws k distinct experts per (token, layer) with probabilities following `share`.
    keys = np.log(share)[None, None, :] + rng.gumbel(size=(tokens, layers, experts))
    return np.argsort(-keys, axis=-1)[..., :k].astype(np.int32)
