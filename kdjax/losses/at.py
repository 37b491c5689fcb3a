"""Attention transfer (methods.md §2, §7; RepDistiller ``Attention``)."""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def _pool_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) averaging matrix with torch ``adaptive_avg_pool`` bins
  ``[floor(i n_in / n_out), ceil((i+1) n_in / n_out))``."""
  m = np.zeros((n_out, n_in), np.float32)
  for i in range(n_out):
    lo, hi = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
    m[i, lo:hi] = 1.0 / (hi - lo)
  return m


def adaptive_avg_pool(f: jax.Array, size: tuple[int, int]) -> jax.Array:
  """torch ``F.adaptive_avg_pool2d`` on an NHWC map (static shapes)."""
  h, w = f.shape[1:3]
  if (h, w) == tuple(size):
    return f
  if h % size[0] == 0 and w % size[1] == 0:
    kh, kw = h // size[0], w // size[1]
    b, c = f.shape[0], f.shape[-1]
    return jnp.mean(f.reshape(b, size[0], kh, size[1], kw, c), axis=(2, 4))
  ph, pw = _pool_matrix(h, size[0]), _pool_matrix(w, size[1])
  return jnp.einsum('ih,jw,bhwc->bijc', ph, pw, f)


def attention_map(f: jax.Array, p: float = 2) -> jax.Array:
  """``at(f)``: channel mean of the SIGNED power ``f**p`` (not ``|f|**p``), flattened
  over space (row-major H, W, as torch's NCHW ``view``) and L2-normalised with eps
  1e-12 (``F.normalize``). ``f`` is NHWC; returns (B, H*W)."""
  f = f.astype(jnp.float32)
  if float(p).is_integer():
    fp = jax.lax.integer_pow(f, int(p))
  else:
    fp = f ** p  # torch gives NaN on negative bases too
  a = jnp.mean(fp, axis=-1).reshape(f.shape[0], -1)
  return a / jnp.sqrt(jnp.maximum(jnp.sum(a * a, axis=1, keepdims=True), 1e-24))


def at_pair_loss(f_s: jax.Array, f_t: jax.Array, p: float = 2) -> jax.Array:
  """One pair: the spatially larger map (decided on H, as the reference does) is
  adaptive-average-pooled to the smaller map's (H, W) (the reference pools to (H, H):
  the same for the square maps of the CIFAR zoo), then ``mean((at(s) - at(t))^2)``."""
  s_hw, t_hw = f_s.shape[1:3], f_t.shape[1:3]
  if s_hw[0] > t_hw[0]:
    f_s = adaptive_avg_pool(f_s, t_hw)
  elif s_hw[0] < t_hw[0]:
    f_t = adaptive_avg_pool(f_t, s_hw)
  return jnp.mean(jnp.square(attention_map(f_s, p) - attention_map(f_t, p)))


def at_loss(feats_s: Sequence[jax.Array], feats_t: Sequence[jax.Array],
            p: float = 2) -> list[jax.Array]:
  """Per-pair AT losses over matched feature lists (methods.md §2 uses feats[1:-1]);
  the objective is their sum, taken at the call site."""
  if len(feats_s) != len(feats_t):
    raise ValueError(f'{len(feats_s)} student vs {len(feats_t)} teacher maps')
  return [at_pair_loss(s, t, p) for s, t in zip(feats_s, feats_t)]
