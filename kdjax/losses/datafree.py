"""Data-free distillation losses (methods.md §5, §7; Fast-Datafree ``criterions.py``, ``hooks.py``
and the synthesizers' objectives).

Pure functions of arrays, computed in float32, each pinned by an ``fd_*`` fixture
(values and gradients) or, for CMI's contrastive term, by an independent numpy check.
The BN-statistics terms take the ``BNLayer`` list of ``kdjax.models.capture``.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kdjax.losses.kd import cross_entropy, kl_div_loss
from kdjax.models.capture import BNLayer

Terms = dict[str, jax.Array]


def _f32(x: jax.Array) -> jax.Array:
  return jnp.asarray(x).astype(jnp.float32)


def _norm(v: jax.Array) -> jax.Array:
  """Euclidean norm whose gradient at 0 is 0 (as torch's), not NaN."""
  sq = jnp.sum(jnp.square(v))
  safe = jnp.where(sq > 0, sq, 1.0)
  return jnp.where(sq > 0, jnp.sqrt(safe), 0.0)


def _abs(x: jax.Array) -> jax.Array:
  """|x| with torch's gradient sign(x), i.e. 0 at 0 (jnp.abs has 1 there; DAFL's
  activation term meets exact zeros of ReLU features)."""
  return x * jax.lax.stop_gradient(jnp.sign(x))


def _active(weight: Any, operand: Any) -> bool:
  """A weighted term is built unless its input is missing or its weight is a Python
  number <= 0 (the reference's ``if self.adv > 0``); traced weights always build it."""
  if operand is None:
    return False
  return not (isinstance(weight, (int, float, np.number)) and weight <= 0)


# --- BatchNorm statistics (DeepInversion) -------------------------------------------

def batch_moments(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(mean, biased variance) over every axis but the last (N, H, W for NHWC)."""
  x = _f32(x)
  axes = tuple(range(x.ndim - 1))
  mean = jnp.mean(x, axis=axes)
  return mean, jnp.mean(jnp.square(x - mean), axis=axes)


class BNMomentum(NamedTuple):
  """Fast-Datafree's per-layer momentum of BN statistics (``DeepInversionHook.mmt``).

  Fixed shapes from the start, so it can be carried through ``jit`` / ``scan``:
  ``initialized`` is False until the first ``update_bn_mmt``, and while False the
  loss ignores ``mean`` / ``var``.
  """
  mean: list[jax.Array]
  var: list[jax.Array]
  initialized: jax.Array  # bool scalar


def init_bn_mmt(bn_layers: Sequence[BNLayer]) -> BNMomentum:
  """Empty momentum state shaped like ``bn_layers`` (only the running stats' shapes are read)."""
  zeros = [jnp.zeros(jnp.shape(l.running_mean), jnp.float32) for l in bn_layers]
  return BNMomentum(zeros, list(zeros), jnp.asarray(False))


def update_bn_mmt(mmt: BNMomentum | None, bn_layers: Sequence[BNLayer],
                  mmt_rate: float) -> BNMomentum:
  """``hook.update_mmt()`` for every layer: the first call stores this batch's
  (mean, biased var); later ones blend ``mmt = a * mmt + (1 - a) * stats``. The new
  statistics are detached, as in the reference."""
  if mmt is None:
    mmt = init_bn_mmt(bn_layers)
  a = mmt_rate
  means, variances = [], []
  for layer, m_old, v_old in zip(bn_layers, mmt.mean, mmt.var, strict=True):
    mean, var = jax.lax.stop_gradient(batch_moments(layer.input))
    means.append(jnp.where(mmt.initialized, a * m_old + (1 - a) * mean, mean))
    variances.append(jnp.where(mmt.initialized, a * v_old + (1 - a) * var, var))
  return BNMomentum(means, variances, jnp.asarray(True))


def bn_layer_losses(bn_layers: Sequence[BNLayer], mmt: BNMomentum | None = None,
                    mmt_rate: float = 0.0) -> jax.Array:
  """Per-layer DeepInversion term ``||mu - rm||_2 + ||var - rv||_2`` (un-squared norms,
  biased batch variance of the layer's INPUT), shape (L,).

  With an initialised ``mmt`` the batch statistics are first blended with it:
  ``(1 - a) * stat + a * stat_mmt`` (Fast-Datafree ``DeepInversionHook``, a = mmt_rate).
  """
  if not bn_layers:
    raise ValueError('bn_stats_loss needs at least one BatchNorm layer')
  out = []
  for i, layer in enumerate(bn_layers):
    mean, var = batch_moments(layer.input)
    if mmt is not None:
      a = mmt_rate
      mean = jnp.where(mmt.initialized, (1 - a) * mean + a * mmt.mean[i], mean)
      var = jnp.where(mmt.initialized, (1 - a) * var + a * mmt.var[i], var)
    out.append(_norm(_f32(layer.running_var) - var) + _norm(_f32(layer.running_mean) - mean))
  return jnp.stack(out)


def bn_stats_loss(bn_layers: Sequence[BNLayer], mmt: BNMomentum | None = None,
                  mmt_rate: float = 0.0) -> jax.Array:
  """``L_BN``: the sum over layers of ``bn_layer_losses`` (methods.md §5, fixture
  fd_deepinversion_hook). Gradients flow into every captured input."""
  return jnp.sum(bn_layer_losses(bn_layers, mmt, mmt_rate))


# --- logit criteria ------------------------------------------------------------------

def kldiv(logits: jax.Array, targets: jax.Array, T: float = 1.0,
          reduction: str = 'batchmean') -> jax.Array:
  """Fast-Datafree ``kldiv``: ``KL(softmax(targets/T) || softmax(logits/T)) * T^2``.

  'batchmean' sums over classes and batch and divides by B (the same number as
  ``kl_div_loss``); 'sum' does not divide; 'none' is the (B, C) elementwise
  ``p_t * (log p_t - log_softmax(logits/T)) * T^2``. Differentiable in both.
  """
  if reduction == 'batchmean':
    return kl_div_loss(logits, targets, T)
  log_p_s = jax.nn.log_softmax(_f32(logits) / T, axis=-1)
  log_p_t = jax.nn.log_softmax(_f32(targets) / T, axis=-1)
  elem = jnp.exp(log_p_t) * (log_p_t - log_p_s) * (T * T)
  if reduction == 'none':
    return elem
  if reduction == 'sum':
    return jnp.sum(elem)
  raise ValueError(f"reduction must be 'batchmean', 'sum' or 'none', got {reduction!r}")


def jsdiv(logits: jax.Array, targets: jax.Array, T: float = 1.0) -> jax.Array:
  """Fast-Datafree ``jsdiv`` (DeepInversion's adversarial term, T=3 there).

  ``M = (P + Q) / 2`` from the unclamped softmaxes; then P, Q and M are each clamped to
  [0.01, 0.99] (zero gradient where clamped) and the loss is
  ``0.5 * KL(M || P) + 0.5 * KL(M || Q)``, batchmean, no ``T^2``.
  """
  p = jax.nn.softmax(_f32(logits) / T, axis=-1)
  q = jax.nn.softmax(_f32(targets) / T, axis=-1)
  m = 0.5 * (p + q)
  p, q, m = (jnp.clip(v, 0.01, 0.99) for v in (p, q, m))
  batch = logits.shape[0]
  log_m = jnp.log(m)
  return (0.5 * jnp.sum(m * (log_m - jnp.log(p))) + 0.5 * jnp.sum(m * (log_m - jnp.log(q)))) / batch


def image_prior_tv(x: jax.Array) -> jax.Array:
  """Total variation of an NHWC batch (``get_image_prior_losses``): the sum of the mean
  absolute horizontal, vertical and both diagonal neighbour differences."""
  x = _f32(x)
  diffs = (x[:, :, :-1] - x[:, :, 1:],          # horizontal
           x[:, :-1, :] - x[:, 1:, :],          # vertical
           x[:, 1:, :-1] - x[:, :-1, 1:],       # anti-diagonal
           x[:, :-1, :-1] - x[:, 1:, 1:])       # diagonal
  return sum(jnp.mean(_abs(d)) for d in diffs)


def onehot_loss(logits: jax.Array, targets: jax.Array | None = None) -> jax.Array:
  """Mean CE against ``targets``, or against the logits' own argmax when None (DAFL)."""
  if targets is None:
    targets = jnp.argmax(logits, axis=-1)
  return cross_entropy(logits, targets)


def agreement_mask(s_logits: jax.Array, t_logits: jax.Array) -> jax.Array:
  """1.0 where student and teacher argmax agree (piecewise constant: no gradient)."""
  return (jnp.argmax(s_logits, -1) == jnp.argmax(t_logits, -1)).astype(jnp.float32)


def masked_adversarial(s_logits: jax.Array, t_logits: jax.Array) -> jax.Array:
  """Fast / CMI decision-adversarial term ``-mean_b(mask_b * sum_c kldiv_none(s, t)_bc)``
  at T = 1; the mean is over ALL B rows (not the agreeing ones) and the gradient flows
  into both logits (fixture fd_fast_adv_loss)."""
  kl = jnp.sum(kldiv(s_logits, t_logits, 1.0, reduction='none'), axis=-1)
  return -jnp.mean(agreement_mask(s_logits, t_logits) * kl)


def dafl_terms(t_logits: jax.Array, t_feat: jax.Array) -> Terms:
  """DAFL's unweighted generator terms: ``oh`` = CE(z_t, argmax z_t); ``balance`` =
  ``sum_c pbar_c log pbar_c`` (negative entropy of the batch-mean softmax, minimised);
  ``act`` = ``-mean|f_t|``."""
  pbar = jnp.mean(jax.nn.softmax(_f32(t_logits), axis=-1), axis=0)
  return {'oh': onehot_loss(t_logits),
          'balance': jnp.sum(pbar * jnp.log(pbar)),
          'act': -jnp.mean(_abs(_f32(t_feat)))}


# --- synthesis objectives ------------------------------------------------------------

def _weighted(weights: dict[str, Any], terms: Terms) -> jax.Array:
  return sum(weights[k] * terms[k] for k in weights)


def dafl_objective(t_logits: jax.Array, t_feat: jax.Array, s_logits: jax.Array | None = None,
                   bn_layers: Sequence[BNLayer] | None = None, *, oh: float = 1.0,
                   balance: float = 20.0, act: float = 0.001, bn: float = 0.0,
                   adv: float = 0.0, adv_T: float = 1.0) -> tuple[jax.Array, Terms]:
  """``GenerativeSynthesizer`` (DAFL) generator loss
  ``bn*L_BN + oh*CE(z_t, argmax) + adv*(-KLDiv_T(z_s, z_t)) + balance*sum pbar log pbar
  + act*(-mean|f_t|)`` (fixture fd_dafl_generator_loss). Returns (loss, unweighted terms).

  As in the reference, ``bn`` is reported whenever ``bn_layers`` are given (the hooks
  always fire) and ``adv`` is 0 unless its weight is > 0 and ``s_logits`` are given.
  """
  terms = dafl_terms(t_logits, t_feat)
  terms['bn'] = bn_stats_loss(bn_layers) if bn_layers else jnp.zeros((), jnp.float32)
  terms['adv'] = (-kldiv(s_logits, t_logits, adv_T) if _active(adv, s_logits)
                  else jnp.zeros((), jnp.float32))
  loss = _weighted({'bn': bn, 'oh': oh, 'adv': adv, 'balance': balance, 'act': act}, terms)
  return loss, terms


def inversion_objective(t_logits: jax.Array, targets: jax.Array,
                        s_logits: jax.Array | None = None,
                        bn_layers: Sequence[BNLayer] | None = None, *, bn: float = 1.0,
                        oh: float = 1.0, adv: float = 0.0, mmt: BNMomentum | None = None,
                        mmt_rate: float = 0.0) -> tuple[jax.Array, Terms]:
  """Fast / CMI inversion loss ``bn*L_BN + oh*CE(z_t, targets) + adv*masked_adversarial``
  (fixture fd_fast_adv_loss; CMI adds ``cr * cmi_contrastive_loss`` outside). ``mmt`` /
  ``mmt_rate``: Fast's BN momentum (``bn_mmt``). Terms also hold ``agree``, the fraction
  of rows where student and teacher agree (a metric, not weighted)."""
  terms = {'bn': bn_stats_loss(bn_layers, mmt, mmt_rate) if bn_layers
           else jnp.zeros((), jnp.float32),
           'oh': onehot_loss(t_logits, targets)}
  if _active(adv, s_logits):
    terms['adv'] = masked_adversarial(s_logits, t_logits)
    terms['agree'] = jnp.mean(agreement_mask(s_logits, t_logits))
  else:
    terms['adv'] = terms['agree'] = jnp.zeros((), jnp.float32)
  return _weighted({'bn': bn, 'oh': oh, 'adv': adv}, terms), terms


def deepinversion_objective(t_logits: jax.Array, targets: jax.Array, images: jax.Array,
                            s_logits: jax.Array | None = None,
                            bn_layers: Sequence[BNLayer] | None = None, *,
                            student_bn_layers: Sequence[BNLayer] | None = None,
                            bn: float = 10.0, oh: float = 1.0, adv: float = 1.0,
                            tv: float = 0.0, l2: float = 0.0, student_bn: float = 0.001,
                            adv_T: float = 3.0) -> tuple[jax.Array, Terms]:
  """``DeepInvSyntheiszer`` pixel loss ``bn*L_BN + oh*CE(z_t, targets) + adv*(-JS_T(z_s, z_t))
  + tv*TV(x) + l2*||x||_2``.

  ``images`` are the optimised pixels themselves (TV and L2 act on them, not on the
  jittered view the logits come from). The reference's BN term also subtracts
  ``student_bn`` (0.001) times the student's own BN-statistics loss, from its eval-mode
  forward on the same view: pass ``student_bn_layers`` to include it.
  """
  bn_term = bn_stats_loss(bn_layers) if bn_layers else jnp.zeros((), jnp.float32)
  if student_bn_layers:
    bn_term = bn_term - student_bn * bn_stats_loss(student_bn_layers)
  terms = {'bn': bn_term, 'oh': onehot_loss(t_logits, targets),
           'adv': (-jsdiv(s_logits, t_logits, adv_T) if _active(adv, s_logits)
                   else jnp.zeros((), jnp.float32)),
           'tv': image_prior_tv(images),
           'l2': _norm(_f32(images))}
  return _weighted({'bn': bn, 'oh': oh, 'adv': adv, 'tv': tv, 'l2': l2}, terms), terms


# --- CMI contrastive term ------------------------------------------------------------

def instance_means(layers: Sequence[BNLayer | jax.Array]) -> jax.Array:
  """CMI's feature: each BN input averaged over its spatial axes (``InstanceMeanHook``),
  concatenated over layers, shape (B, sum of channels). Plain NHWC maps are accepted too
  (the reference hooks resnet34's stage *inputs* instead of its BN layers)."""
  maps = [_f32(l.input if isinstance(l, BNLayer) else l) for l in layers]
  return jnp.concatenate([jnp.mean(x, axis=tuple(range(1, x.ndim - 1))) for x in maps], axis=-1)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """torch ``F.normalize(x, dim=-1)``: ``x / max(||x||, eps)``."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


class MemoryBank(NamedTuple):
  """Fixed-capacity ring buffer of CMI features (rows ``[local, global]``). ``size``
  counts valid rows (they are always rows ``0 .. size-1``)."""
  data: jax.Array   # (capacity, dim) float32
  ptr: jax.Array    # int32 scalar: next row to write
  size: jax.Array   # int32 scalar: valid rows, <= capacity


def bank_init(capacity: int, dim: int) -> MemoryBank:
  return MemoryBank(jnp.zeros((capacity, dim), jnp.float32), jnp.zeros((), jnp.int32),
                    jnp.zeros((), jnp.int32))


def bank_add(bank: MemoryBank, feats: jax.Array) -> MemoryBank:
  """Writes ``feats`` (n, dim), detached, at the pointer, wrapping around (``MemoryBank.add``)."""
  capacity = bank.data.shape[0]
  n = feats.shape[0]
  if n > capacity:
    raise ValueError(f'cannot add {n} rows to a memory bank of {capacity}')
  rows = (bank.ptr + jnp.arange(n, dtype=jnp.int32)) % capacity
  data = bank.data.at[rows].set(jax.lax.stop_gradient(_f32(feats)))
  return MemoryBank(data, (bank.ptr + n) % capacity, jnp.minimum(bank.size + n, capacity))


def bank_sample(bank: MemoryBank, key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
  """``n`` rows drawn uniformly without replacement from the valid ones, and a (n,) bool
  mask: while fewer than ``n`` rows are valid only the first ``size`` samples are real
  (the reference then returns ``min(n, size)`` rows; shapes here stay static).

  Differs from the reference in one corner: it treats a bank that has received exactly
  ``capacity`` rows as full, where ``MemoryBank.get_data`` samples nothing.
  """
  capacity = bank.data.shape[0]
  if n > capacity:
    raise ValueError(f'cannot sample {n} rows from a memory bank of {capacity}')
  scores = jax.random.uniform(key, (capacity,))
  scores = jnp.where(jnp.arange(capacity) < bank.size, scores, 2.0)  # invalid rows last
  rows = jnp.argsort(scores)[:n]
  return bank.data[rows], jnp.arange(n) < bank.size


def local_global_infonce(proj_local: jax.Array, proj_global: jax.Array, batch: int,
                         valid: jax.Array | None = None,
                         temperature: float = 0.2) -> jax.Array:
  """CMI's InfoNCE on projected rows ``[batch rows, bank rows]`` of both views.

  ``logits = proj_local @ stop_gradient(proj_global).T / temperature``; row i's positive
  is column i; every other valid column is a negative. The loss is the mean CE of the
  batch rows plus the mean CE of the valid bank rows (only the first when no bank row is
  valid). ``valid`` (bank rows,) masks bank rows out as anchors and as negatives.
  """
  total = proj_local.shape[0]
  logits = _f32(proj_local) @ jax.lax.stop_gradient(_f32(proj_global)).T / temperature
  if valid is None:
    valid = jnp.ones((total - batch,), bool)
  cols = jnp.concatenate([jnp.ones((batch,), bool), valid])
  # a large finite value, not -inf, so masked-out anchor rows stay finite (weight 0)
  logits = jnp.where(cols[None, :], logits, -1e9)
  ce = -jnp.diagonal(jax.nn.log_softmax(logits, axis=-1))
  n_valid = jnp.sum(valid.astype(jnp.float32))
  bank_term = jnp.sum(jnp.where(valid, ce[batch:], 0.0)) / jnp.maximum(n_valid, 1.0)
  return jnp.mean(ce[:batch]) + jnp.where(n_valid > 0, bank_term, 0.0)


