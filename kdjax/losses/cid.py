"""CID: comprehensive, interventional distillation (methods.md §3, §7; fixtures cid_*).

Everything is static-shape: the class loss masks a (B, B) same-class matrix instead of
grouping the batch, and the context dictionary is a per-class segment sum finalised
once per epoch (closed form of the reference's running weighted mean).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from kdjax.losses.kd import cross_entropy, kl_div_loss


def normalized_mse(pred: jax.Array, target: jax.Array) -> jax.Array:
  """``mean_b ||pred_b - target_b||^2 / ||target_b||^2`` with no epsilon (``NORM_MSE``)."""
  pred, target = pred.astype(jnp.float32), target.astype(jnp.float32)
  num = jnp.sum(jnp.square(pred - target), axis=-1)
  return jnp.mean(num / jnp.sum(jnp.square(target), axis=-1))


def _row_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  x = x.astype(jnp.float32)
  return x / jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def class_gram_terms(f_s: jax.Array, f_t: jax.Array, labels: jax.Array,
                     num_classes: int) -> tuple[jax.Array, jax.Array]:
  """Per-class ``||G_t - G_s||_F^2 / n_k^2`` over the batch's class-``k`` rows (C,), and
  whether class ``k`` qualifies (``n_k >= 2``) (C,) bool; non-qualifying classes give 0.

  ``G = F F^T`` of the row-L2-normalised features (eps 1e-12), restricted to pairs of
  the same class by masking; cost O(B^2 d), no loop over classes.
  """
  fs, ft = _row_normalize(f_s), _row_normalize(f_t)
  diff = ft @ ft.T - fs @ fs.T                                   # (B, B)
  same = labels[:, None] == labels[None, :]
  counts = jax.ops.segment_sum(jnp.ones_like(labels, jnp.float32), labels, num_classes)
  n_row = counts[labels]                                          # n_{y_i}
  row_ok = n_row >= 2
  row_sum = jnp.sum(jnp.where(same, jnp.square(diff), 0.0), axis=1)
  row_term = jnp.where(row_ok, row_sum / jnp.square(n_row), 0.0)
  per_class = jax.ops.segment_sum(row_term, labels, num_classes)
  return per_class, counts >= 2


def class_gram_loss(f_s: jax.Array, f_t: jax.Array, labels: jax.Array,
                    num_classes: int) -> jax.Array:
  """CID class-representation loss (methods.md §3): the mean of ``class_gram_terms`` over
  the classes with at least two examples in the batch, exactly 0 (with zero gradient)
  when none qualifies. Uses the RAW student feature, so ``d_s != d_t`` is fine."""
  per_class, qualifies = class_gram_terms(f_s, f_t, labels, num_classes)
  n_q = jnp.sum(qualifies.astype(jnp.float32))
  return jnp.where(n_q > 0, jnp.sum(per_class) / jnp.maximum(n_q, 1.0), 0.0)


class ContextAccumulator(NamedTuple):
  """Epoch-long sums for the context dictionary: ``sum_i w_i f_s,i`` per class (C, d_s)
  and ``sum_i w_i`` per class (C,) (the reference's ``current_num``)."""
  weighted_sum: jax.Array
  weight: jax.Array


def init_context_accumulator(num_classes: int, dim: int) -> ContextAccumulator:
  return ContextAccumulator(jnp.zeros((num_classes, dim), jnp.float32),
                            jnp.zeros((num_classes,), jnp.float32))


def context_accumulate(acc: ContextAccumulator, f_s: jax.Array, teacher_logits: jax.Array,
                       labels: jax.Array, temperature: float) -> ContextAccumulator:
  """Adds a batch: ``w_i = softmax(z_t,i / T)[y_i]`` and ``w_i f_s,i`` segment-summed by
  label, all detached (methods.md §3: detached raw student feature)."""
  f_s = jax.lax.stop_gradient(f_s).astype(jnp.float32)
  p_t = jax.nn.softmax(jax.lax.stop_gradient(teacher_logits).astype(jnp.float32) / temperature,
                       axis=-1)
  w = jnp.take_along_axis(p_t, labels[:, None], axis=1)[:, 0]
  c = acc.weight.shape[0]
  return ContextAccumulator(
      acc.weighted_sum + jax.ops.segment_sum(w[:, None] * f_s, labels, c),
      acc.weight + jax.ops.segment_sum(w, labels, c))


def context_finalize(acc: ContextAccumulator, old_dictionary: jax.Array | None,
                     cu: float = 0.0) -> jax.Array:
  """Dictionary for the next epoch: ``cu * D_old + (1 - cu) * D_new`` with
  ``D_new[k] = sum w f / sum w`` (the reference's running weighted mean, order-free)
  and ``D_new[k] = 0`` for classes never seen this epoch (as the reference leaves
  them). ``old_dictionary=None`` means no mixing (the first build, methods.md §3)."""
  seen = acc.weight > 0
  d_new = jnp.where(seen[:, None], acc.weighted_sum / jnp.where(seen, acc.weight, 1.0)[:, None],
                    0.0)
  if old_dictionary is None:
    return d_new
  return cu * old_dictionary + (1 - cu) * d_new


def cid_loss(student_logits: jax.Array, teacher_logits: jax.Array, f_s: jax.Array,
             f_t: jax.Array, labels: jax.Array, reg_out: jax.Array, *,
             interventional_logits: jax.Array | None, temperature: float,
             num_classes: int, a: float = 1.0, b: float = 1.0,
             c: float = 1.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """CID objective (methods.md §3). ``reg_out`` is ``SampleRegressor(f_s)``; ``f_s`` the raw
  student feature. Phase 1 (``interventional_logits is None``, epochs < init_epochs):
  ``a KL_T + b L_sample + c L_class`` with no CE at all. Phase 2:
  ``a (CE(z_do, y) + KL_T(z_s || z_t)) + b L_sample + c L_class``; KL on the plain
  logits, CE only on ``z_do``. Returns ``(total, terms)``."""
  terms = {
      'kl': kl_div_loss(student_logits, teacher_logits, temperature),
      'sample': normalized_mse(reg_out, f_t),
      'class': class_gram_loss(f_s, f_t, labels, num_classes),
  }
  main = terms['kl']
  if interventional_logits is not None:
    terms['ce'] = cross_entropy(interventional_logits, labels)
    main = main + terms['ce']
  total = a * main + b * terms['sample'] + c * terms['class']
  return total, terms
