"""Similarity-preserving KD (RepDistiller ``Similarity``; fixtures README, Semantics 4)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _row_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  # == x / max(||x||, eps) (F.normalize), with a finite gradient at x = 0
  return x / jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=1, keepdims=True), eps * eps))


def similarity_loss(f_s: jax.Array, f_t: jax.Array) -> jax.Array:
  """``sum((G_t - G_s)^2) / B^2`` with ``G = row_l2normalize(f f^T)`` and ``f`` the
  per-example flattened map (any layout: the Gram matrix does not depend on the
  flatten order). Shapes of student and teacher may differ except for B."""
  b = f_s.shape[0]
  fs = f_s.reshape(b, -1).astype(jnp.float32)
  ft = f_t.reshape(b, -1).astype(jnp.float32)
  g_s = _row_normalize(fs @ fs.T)
  g_t = _row_normalize(ft @ ft.T)
  return jnp.sum(jnp.square(g_t - g_s)) / (b * b)
