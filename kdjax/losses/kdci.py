"""KDCI's de-confounded student head (methods.md §6): the NWGM approximation of the
backdoor adjustment ``P(S | do(X)) = sum_z P(S | X, z) P(z)`` as one forward pass.

  lambda_i = softmax_i(w^T tanh(W_q h_s + W_k z_i))          (additive, hidden 256)
          or softmax_i((W_q h_s) . (W_k z_i) / sqrt(hidden))  (option 'dot')
  F        = sum_i lambda_i P(z_i) z_i
  u        = h_s W_h + F W_g
  z_do     = Linear(u)

``h_s`` is the student's pooled penultimate feature (B, d_s), ``z_i`` the prototypes
(N, d_z) and ``P(z_i)`` their prior (N,). The fused width is d_s (ours: the adjusted
classifier then has the shape of the plain one). All layers are torch-style
initialised ``Dense``; W_q, W_k, w, W_h, W_g have no bias (as the formulas), the final
classifier has one.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.models.layers import linear

ATTENTIONS = ('additive', 'dot')


class DeconfoundedHead(nn.Module):
  num_classes: int
  hidden: int = 256
  attention: str = 'additive'

  @nn.compact
  def __call__(self, h: jax.Array, prototypes: jax.Array, prior: jax.Array,
               attention_logits: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """``(z_do (B, C), lambda (B, N))``. ``attention_logits`` (B, N), when given,
    replace the learned scores (the random-attention ablation); the attention
    parameters still exist, so the parameter tree does not depend on the ablation."""
    if self.attention not in ATTENTIONS:
      raise ValueError(f'attention {self.attention!r}; accepted: {", ".join(ATTENTIONS)}')
    h = h.astype(jnp.float32)
    d_s, d_z = h.shape[-1], prototypes.shape[-1]
    q = linear(self.hidden, d_s, use_bias=False, name='query')(h)              # (B, H)
    k = linear(self.hidden, d_z, use_bias=False, name='key')(prototypes)       # (N, H)
    if self.attention == 'additive':
      act = jnp.tanh(q[:, None, :] + k[None, :, :])                            # (B, N, H)
      scores = linear(1, self.hidden, use_bias=False, name='score')(act)[..., 0]
    else:
      scores = q @ k.T / jnp.sqrt(float(self.hidden))
    if attention_logits is not None:
      scores = attention_logits
    lam = jax.nn.softmax(scores, axis=-1)                                      # (B, N)
    compensation = (lam * prior[None, :]) @ prototypes                         # F (B, d_z)
    u = (linear(d_s, d_s, use_bias=False, name='fuse_h')(h)
         + linear(d_s, d_z, use_bias=False, name='fuse_f')(compensation))
    return linear(self.num_classes, d_s, name='classifier')(u), lam


def entropy(p: jax.Array, axis: int = -1) -> jax.Array:
  """``-sum p log p`` with ``0 log 0 = 0``."""
  return -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=axis)
