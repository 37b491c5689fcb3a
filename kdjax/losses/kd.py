"""Logit-level losses: Hinton KD and cross-entropy (methods.md §2, §7)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def kl_div_loss(student_logits: jax.Array, teacher_logits: jax.Array,
                temperature: float) -> jax.Array:
  """``KL_T(z_s || z_t)``: KL(softmax(z_t/T) || softmax(z_s/T)) summed over classes,
  divided by the batch size ('batchmean') and multiplied by ``T^2`` (methods.md §7,
  RepDistiller ``DistillKL``; CID's ``KL`` is the same).

  Differentiable in both arguments; freezing the teacher is the caller's business.
  Computed in float32.
  """
  t = temperature
  log_p_s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / t, axis=-1)
  log_p_t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / t, axis=-1)
  p_t = jnp.exp(log_p_t)
  batch = student_logits.shape[0]
  return jnp.sum(p_t * (log_p_t - log_p_s)) * (t * t) / batch


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy against integer labels (torch ``F.cross_entropy``)."""
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels))
