"""Contrastive representation distillation with the memory bank as explicit state
(methods.md §2 CRD, §7; RepDistiller ``CRDLoss`` / ``ContrastMemory`` / ``ContrastLoss``).

The memory is a pytree threaded through the train step: ``crd_loss`` returns the
updated memory instead of mutating a buffer, so the whole step stays jittable.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp


Z_UNSET = -1.0  # sentinel: the normalisation constants have not been fixed yet


class CRDMemory(NamedTuple):
  """One unit-ish vector per training example per side, plus the fixed ``Z``.

  ``memory_s`` (torch ``memory_v1``) holds student embeddings and scores the TEACHER
  embeddings; ``memory_t`` (``memory_v2``) holds teacher embeddings and scores the
  student embeddings. ``z_s``/``z_t`` (``Z_v1``/``Z_v2``) are ``Z_UNSET`` until the
  first batch fixes them.
  """
  memory_s: jax.Array  # (n_data, dim)
  memory_t: jax.Array  # (n_data, dim)
  z_s: jax.Array       # () float32
  z_t: jax.Array       # () float32


def init_crd_memory(key: jax.Array, n_data: int, dim: int = 128) -> CRDMemory:
  """Both memories uniform in ``[-stdv, stdv]``, ``stdv = 1/sqrt(dim/3)``; Z unset."""
  stdv = 1.0 / math.sqrt(dim / 3)
  k_s, k_t = jax.random.split(key)
  mem = lambda k: jax.random.uniform(k, (n_data, dim), jnp.float32, -stdv, stdv)
  unset = jnp.asarray(Z_UNSET, jnp.float32)
  return CRDMemory(mem(k_s), mem(k_t), unset, unset)


def contrast_loss(x: jax.Array, n_data: int) -> jax.Array:
  """NCE loss on (B, K+1) positive scores, column 0 the positive (``ContrastLoss``):
  ``-(sum_b log(P_b0 / (P_b0 + K/n + eps)) + sum_{b,k>=1} log((K/n) / (P_bk + K/n + eps))) / B``
  with eps 1e-7. A trailing singleton axis (torch's (B, K+1, 1)) is accepted."""
  x = x.reshape(x.shape[0], -1).astype(jnp.float32)
  b, k = x.shape[0], x.shape[1] - 1
  m_pn = k * (1.0 / float(n_data))
  denom_const = m_pn + 1e-7
  pos, neg = x[:, 0], x[:, 1:]
  log_d1 = jnp.log(pos / (pos + denom_const))
  log_d0 = jnp.log(m_pn / (neg + denom_const))
  return -(jnp.sum(log_d1) + jnp.sum(log_d0)) / b


def _renormalize(x: jax.Array) -> jax.Array:
  return x / jnp.sqrt(jnp.sum(x * x, axis=1, keepdims=True))


# bank_dots scores against the whole bank when it has at most this many times the rows
# that one example draws (CIFAR: 50,000 rows, 16,385 drawn: 3.05)
FULL_BANK_RATIO = 4


def bank_dots(bank: jax.Array, v: jax.Array, contrast_idx: jax.Array) -> jax.Array:
  """``<bank[contrast_idx[b, k]], v[b]>``, shape (B, K+1).

  Gathering the rows materialises a (B, K+1, dim) array: 537 MB a side at CIFAR's 16,384
  negatives and batch 64, and on the CPU that gather cost a third of the step. When the
  bank has at most ``FULL_BANK_RATIO`` times as many rows as an example draws, the dot
  products with every row (one (n_data, dim) x (dim, B) matmul) cost at most that many
  times the multiply-adds and gather only the (B, K+1) scores; ImageNet-size banks keep
  the row gather. Both give the same numbers up to float32 summation order.
  """
  if bank.shape[0] <= FULL_BANK_RATIO * contrast_idx.shape[1]:
    every_row = jnp.einsum('bd,nd->bn', v, bank)
    return jnp.take_along_axis(every_row, contrast_idx, axis=1)
  return jnp.einsum('bkd,bd->bk', bank[contrast_idx], v)


def crd_scores(v_s: jax.Array, v_t: jax.Array, contrast_idx: jax.Array, memory: CRDMemory,
               temperature: float = 0.07) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Normalised scores ``(out_s, out_t, z_s, z_t)``, each output (B, K+1).

  ``out_s = exp(<memory_t[cidx], v_s>/T) / Z_s`` and ``out_t = exp(<memory_s[cidx], v_t>/T)
  / Z_t`` (cross pairing). Unset ``Z`` are fixed here from this batch as
  ``mean(unnormalised out) * n_data`` (detached)."""
  n_data = memory.memory_s.shape[0]
  mem_s = jax.lax.stop_gradient(memory.memory_s)
  mem_t = jax.lax.stop_gradient(memory.memory_t)
  out_s = jnp.exp(bank_dots(mem_t, v_s, contrast_idx) / temperature)
  out_t = jnp.exp(bank_dots(mem_s, v_t, contrast_idx) / temperature)
  z_s = jnp.where(memory.z_s < 0, jax.lax.stop_gradient(jnp.mean(out_s)) * n_data, memory.z_s)
  z_t = jnp.where(memory.z_t < 0, jax.lax.stop_gradient(jnp.mean(out_t)) * n_data, memory.z_t)
  return out_s / z_s, out_t / z_t, z_s, z_t


def update_memory(memory: CRDMemory, v_s: jax.Array, v_t: jax.Array, idx: jax.Array,
                  momentum: float = 0.5, z_s: jax.Array | None = None,
                  z_t: jax.Array | None = None) -> CRDMemory:
  """Momentum update of the rows ``idx`` followed by L2 renormalisation (no eps), no
  gradient. With repeated indices in ``idx`` one of the writes wins (as in torch)."""
  v_s, v_t = jax.lax.stop_gradient(v_s), jax.lax.stop_gradient(v_t)
  new_s = _renormalize(memory.memory_s[idx] * momentum + v_s * (1 - momentum))
  new_t = _renormalize(memory.memory_t[idx] * momentum + v_t * (1 - momentum))
  return CRDMemory(
      memory.memory_s.at[idx].set(new_s), memory.memory_t.at[idx].set(new_t),
      memory.z_s if z_s is None else jax.lax.stop_gradient(z_s),
      memory.z_t if z_t is None else jax.lax.stop_gradient(z_t))


def crd_loss(v_s: jax.Array, v_t: jax.Array, idx: jax.Array, contrast_idx: jax.Array,
             memory: CRDMemory, temperature: float = 0.07,
             momentum: float = 0.5) -> tuple[jax.Array, CRDMemory]:
  """CRD objective for one batch: NCE in both directions, then the memory update.

  ``v_s``, ``v_t`` are the ``Embed`` outputs (B, dim); ``idx`` (B,) the examples'
  dataset indices; ``contrast_idx`` (B, K+1) with column 0 == ``idx`` (see
  ``sample_negatives``). Returns ``(s_loss + t_loss, new_memory)``; the memory is
  updated AFTER scoring and ``Z`` is fixed by the first call (methods.md §7).
  """
  n_data = memory.memory_s.shape[0]
  out_s, out_t, z_s, z_t = crd_scores(v_s, v_t, contrast_idx, memory, temperature)
  loss = contrast_loss(out_s, n_data) + contrast_loss(out_t, n_data)
  return loss, update_memory(memory, v_s, v_t, idx, momentum, z_s, z_t)


def sample_negatives(key: jax.Array, idx: jax.Array, n_data: int, k: int) -> jax.Array:
  """(B, k+1) indices: column 0 the positive ``idx``, columns 1..k uniform over the
  dataset with replacement (may hit the positive, like the reference's uniform
  ``AliasMethod`` sampler)."""
  neg = jax.random.randint(key, (idx.shape[0], k), 0, n_data, dtype=jnp.int32)
  return jnp.concatenate([idx.astype(jnp.int32)[:, None], neg], axis=1)


def sample_negatives_other_class(key: jax.Array, idx: jax.Array, labels: jax.Array,
                                 order: jax.Array, class_start: jax.Array,
                                 class_count: jax.Array, k: int) -> jax.Array:
  """Like ``sample_negatives`` but negatives drawn uniformly WITH replacement among the
  examples of OTHER classes: RepDistiller's rule when ``k`` exceeds the number of
  other-class examples (``replace = k > len(cls_negative[target])``); otherwise use
  ``sample_negatives_exact``. ``order`` lists the dataset indices sorted by class,
  ``class_start``/``class_count`` give each class's block in it (all static-shape,
  e.g. from ``np.argsort(train_labels, kind='stable')``); ``labels`` are the batch's.
  A draw ``r`` in ``[0, n_data - n_y)`` skips class ``y``'s block."""
  n_data = order.shape[0]
  start = class_start[labels][:, None]
  count = class_count[labels][:, None]
  u = jax.random.uniform(key, (idx.shape[0], k))
  r = jnp.minimum(jnp.floor(u * (n_data - count)).astype(jnp.int32), n_data - count - 1)
  pos = jnp.where(r < start, r, r + count)
  return jnp.concatenate([idx.astype(jnp.int32)[:, None], order[pos].astype(jnp.int32)], axis=1)


def negative_window(k: int, max_class_count: int) -> jax.Array:
  """The offsets ``0 .. k + max_class_count - 1`` that ``sample_negatives_exact`` walks:
  a window this long always holds ``k`` examples of other classes."""
  return jnp.arange(k + max_class_count, dtype=jnp.int32)


def sample_negatives_exact(key: jax.Array, idx: jax.Array, labels: jax.Array,
                           train_labels: jax.Array, window: jax.Array, k: int) -> jax.Array:
  """(B, k+1) indices: column 0 the positive ``idx``, columns 1..k distinct examples of
  classes other than the row's ``labels``, a uniformly random k-subset for every row:
  RepDistiller's default ``mode='exact'``
  (``np.random.choice(cls_negative[target], k, replace=False)``).

  Static shapes without a per-row sort of the dataset: one random permutation of the
  dataset per call, each row walks it cyclically from its own random offset over
  ``window`` (``negative_window``: long enough to pass every example of one class) and
  keeps the first ``k`` examples of another class (cumsum rank + scatter). A rotation
  of a uniform permutation restricted to the other classes is a uniform ordering of
  them, so each row's k-subset has exactly the reference's distribution; rows of one
  batch share the permutation, so unlike the reference their subsets are not
  independent (the NCE gradient of a row depends only on its own negatives, so this
  changes the variance of a step, not its expectation). Needs
  ``k + max_class_count <= n_data`` (else use ``sample_negatives_other_class``).
  """
  n_data = train_labels.shape[0]
  k_perm, k_off = jax.random.split(key)
  perm = jax.random.permutation(k_perm, n_data).astype(jnp.int32)
  offset = jax.random.randint(k_off, (idx.shape[0], 1), 0, n_data, dtype=jnp.int32)
  cand = perm[(offset + window[None, :]) % n_data]                       # (B, L)
  keep = train_labels[cand] != labels.astype(train_labels.dtype)[:, None]
  rank = jnp.cumsum(keep, axis=1, dtype=jnp.int32) - 1
  slot = jnp.where(keep & (rank < k), rank, k)                            # k: dropped
  rows = jnp.arange(idx.shape[0], dtype=jnp.int32)[:, None]
  neg = jnp.zeros((idx.shape[0], k + 1), jnp.int32).at[rows, slot].set(cand)[:, :k]
  return jnp.concatenate([idx.astype(jnp.int32)[:, None], neg], axis=1)
