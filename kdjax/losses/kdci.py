"""KDCI's loss-side helper: the entropy of the prior and of the attention weights (its
head is ``kdjax.models.heads.DeconfoundedHead``)."""
from __future__ import annotations

import jax
import jax.numpy as jnp



def entropy(p: jax.Array, axis: int = -1) -> jax.Array:
  """``-sum p log p`` with ``0 log 0 = 0``."""
  return -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=axis)
