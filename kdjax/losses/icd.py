"""ICD: invariant consistency distillation (methods.md §4, §7; fixture icd_loss)."""
from __future__ import annotations

import jax
import jax.numpy as jnp



def _l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  return x / jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def icd_logits(e_s: jax.Array, e_t: jax.Array, log_scale: jax.Array, bias: jax.Array,
               max_scale: float = 10.0) -> jax.Array:
  """``S = clip(exp(theta), 0, max_scale) * e_s e_t^T + b`` (B, B); above the cap the
  scale is constant, so theta gets exactly zero gradient."""
  scale = jnp.clip(jnp.exp(log_scale), 0.0, max_scale)
  return scale * (e_s @ e_t.T) + bias


def icd_loss(e_s: jax.Array, e_t: jax.Array, log_scale: jax.Array, bias: jax.Array, *,
             max_scale: float = 10.0,
             alpha_inv: float = 0.5) -> tuple[jax.Array, dict[str, jax.Array]]:
  """``L_con + alpha_inv * L_inv`` (methods.md §4).

  ``L_con = CE(S, arange(B))`` over rows; ``L_inv = KL(P2 || P1)`` batchmean with
  ``P1 = log_softmax(S, axis=1)`` and ``P2 = softmax(S, axis=0)^T``, the target NOT
  detached. ``b`` cancels in both softmaxes. With data parallelism, pass the
  globally gathered embeddings so the negatives are the whole global batch.
  Returns ``(total, {'contrastive', 'invariance'})``.
  """
  s = icd_logits(e_s.astype(jnp.float32), e_t.astype(jnp.float32), log_scale, bias, max_scale)
  n = s.shape[0]
  log_p1 = jax.nn.log_softmax(s, axis=1)
  contrastive = -jnp.mean(jnp.diagonal(log_p1))
  log_p2 = jax.nn.log_softmax(s, axis=0).T
  invariance = jnp.sum(jnp.exp(log_p2) * (log_p2 - log_p1)) / n
  total = contrastive + alpha_inv * invariance
  return total, {'contrastive': contrastive, 'invariance': invariance}
