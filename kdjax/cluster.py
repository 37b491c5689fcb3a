"""PCA and K-Means++ as pure, jitted JAX functions (KDCI's confounder dictionary, methods.md §6).

Every function takes a fixed-size array ``x`` (n, d) and a ``mask`` (n,) of the rows that
count, so a partly filled pool (data-free) or a partly written per-example memory keeps
one static shape and one compilation. Rows outside the mask have no influence at all: not
on the mean, the covariance, the seeds, the assignments or the counts. Everything runs on
the device inside one call (``lax.fori_loop`` / ``lax.while_loop``), with no host round
trip per iteration, and is deterministic given the key.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

# Row blocks of the (n, k) distance matrix are computed one at a time above this many
# entries (256 MiB of float32), so memory stays bounded for any pool size.
_MAX_DISTANCE_ENTRIES = 1 << 26


class PCA(NamedTuple):
  mean: jax.Array        # (d,)
  components: jax.Array  # (dim, d), rows orthonormal, by decreasing variance


def _masked(x: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """float32 rows with the invalid ones zeroed (so even non-finite garbage in an unfilled
  slot cannot leak through a 0 * inf), and the (n,) 0/1 weights."""
  w = jnp.asarray(mask).reshape(-1) > 0
  return jnp.where(w[:, None], x.astype(jnp.float32), 0.0), w.astype(jnp.float32)


@functools.partial(jax.jit, static_argnames='dim')
def pca_fit(x: jax.Array, mask: jax.Array, dim: int) -> PCA:
  """The top-``dim`` principal directions of the rows of ``x`` selected by ``mask``.

  Eigenvectors of the (d, d) covariance: one pass over the rows, then an ``eigh`` whose
  cost does not depend on n (a 2048-wide feature needs a 2048 x 2048 eigh, not an SVD of
  the 50,000-row pool). Signs are fixed so that each component's largest-magnitude
  entry is positive (SVD signs are arbitrary; this makes the result reproducible).
  """
  d = x.shape[1]
  if not 0 < dim <= d:
    raise ValueError(f'PCA dimension {dim} must be in 1..{d} (the feature width)')
  x, w = _masked(x, mask)
  count = jnp.maximum(jnp.sum(w), 1.0)
  mean = jnp.sum(x * w[:, None], axis=0) / count
  xc = (x - mean) * w[:, None]
  cov = jnp.matmul(xc.T, xc, precision=jax.lax.Precision.HIGHEST) / jnp.maximum(count - 1, 1.0)
  _, vecs = jnp.linalg.eigh(cov)            # ascending eigenvalues, vectors in columns
  comps = vecs[:, ::-1][:, :dim].T          # (dim, d), decreasing variance
  pivot = jnp.take_along_axis(comps, jnp.argmax(jnp.abs(comps), axis=1)[:, None], axis=1)
  comps = comps * jnp.where(pivot < 0, -1.0, 1.0)
  return PCA(mean, comps)


@jax.jit
def pca_transform(pca: PCA, x: jax.Array) -> jax.Array:
  """(n, d) -> (n, dim): coordinates along the components after centring."""
  return jnp.matmul(x.astype(jnp.float32) - pca.mean, pca.components.T,
                    precision=jax.lax.Precision.HIGHEST)


def _sq_distances(x: jax.Array, c: jax.Array) -> jax.Array:
  """(n, d), (k, d) -> (n, k) squared Euclidean distances, clipped at 0 (the expansion
  ||x||^2 - 2 x.c + ||c||^2 can round below zero)."""
  xc = jnp.matmul(x, c.T, precision=jax.lax.Precision.HIGHEST)
  d2 = jnp.sum(x * x, axis=1)[:, None] - 2.0 * xc + jnp.sum(c * c, axis=1)[None, :]
  return jnp.maximum(d2, 0.0)


def _nearest(x: jax.Array, c: jax.Array, block: int) -> jax.Array:
  """Index of the nearest centroid for every row, ``block`` rows at a time."""
  n = x.shape[0]
  if block >= n:
    return jnp.argmin(_sq_distances(x, c), axis=1).astype(jnp.int32)
  blocks = -(-n // block)
  padded = jnp.pad(x, ((0, blocks * block - n), (0, 0))).reshape(blocks, block, -1)
  out = jax.lax.map(lambda xb: jnp.argmin(_sq_distances(xb, c), axis=1).astype(jnp.int32),
                    padded)
  return out.reshape(-1)[:n]


def _kmeans_pp_seeds(key: jax.Array, x: jax.Array, w: jax.Array, k: int) -> jax.Array:
  """K-Means++ seeding: the first seed uniform over the valid rows, each next one drawn
  with probability proportional to its squared distance to the nearest seed so far.
  When every valid row already coincides with a seed (fewer distinct points than k) the
  draw falls back to uniform over the valid rows."""
  n, d = x.shape
  keys = jax.random.split(key, k)

  def draw(i_key, weights):
    p = jnp.where(jnp.sum(weights) > 0, weights, w)
    return jax.random.categorical(i_key, jnp.where(p > 0, jnp.log(jnp.where(p > 0, p, 1.0)),
                                                   -jnp.inf))

  first = x[draw(keys[0], w)]
  centroids = jnp.zeros((k, d), x.dtype).at[0].set(first)
  d2 = jnp.sum((x - first) ** 2, axis=1)

  def body(i, carry):
    centroids, d2 = carry
    c = x[draw(keys[i], d2 * w)]
    return centroids.at[i].set(c), jnp.minimum(d2, jnp.sum((x - c) ** 2, axis=1))

  centroids, _ = jax.lax.fori_loop(1, k, body, (centroids, d2))
  return centroids


def _cluster_sums(x: jax.Array, w: jax.Array, assign: jax.Array, k: int
                  ) -> tuple[jax.Array, jax.Array]:
  sums = jax.ops.segment_sum(x * w[:, None], assign, num_segments=k)
  counts = jax.ops.segment_sum(w, assign, num_segments=k)
  return sums, counts


@functools.partial(jax.jit, static_argnames=('k', 'iters', 'block'))
def kmeans(key: jax.Array, x: jax.Array, mask: jax.Array, k: int, iters: int,
           block: int = 0) -> tuple[jax.Array, jax.Array, jax.Array]:
  """K-Means++ seeding, then at most ``iters`` Lloyd iterations (stopping early once no
  assignment changes).

  Returns ``(centroids (k, d), counts (k,), assignments (n,))``: counts are the number
  of valid rows in each cluster (float32, they sum to the number of valid rows) and
  ``assignments`` is -1 for rows outside the mask. A cluster that loses all its rows
  keeps its previous centroid and a count of 0 (deterministic, no re-seeding), so
  ``counts / counts.sum()`` is a proper prior over the k prototypes. ``block`` rows of
  the distance matrix are computed at a time (0 = automatic: all rows unless the
  (n, k) matrix would exceed 2^26 entries).
  """
  if k < 1 or iters < 0:
    raise ValueError(f'kmeans needs k >= 1 and iters >= 0, got k={k}, iters={iters}')
  x, w = _masked(x, mask)
  n = x.shape[0]
  block = block or max(1, min(n, _MAX_DISTANCE_ENTRIES // k))
  centroids = _kmeans_pp_seeds(key, x, w, k)
  assign = _nearest(x, centroids, block)

  def cond(carry):
    i, _, _, changed = carry
    return (i < iters) & changed

  def update(centroids, assign):
    sums, counts = _cluster_sums(x, w, assign, k)
    means = sums / jnp.maximum(counts, 1.0)[:, None]
    return jnp.where(counts[:, None] > 0, means, centroids), counts

  def body(carry):
    i, centroids, assign, _ = carry
    centroids, _ = update(centroids, assign)
    new = _nearest(x, centroids, block)
    changed = jnp.any((new != assign) & (w > 0))
    return i + 1, centroids, new, changed

  _, centroids, assign, _ = jax.lax.while_loop(
      cond, body, (jnp.zeros((), jnp.int32), centroids, assign, jnp.asarray(True)))
  # centroids = means of the final assignment, so prototypes and counts describe one
  # partition also when the iteration budget ran out before convergence
  centroids, counts = update(centroids, assign)
  return centroids, counts, jnp.where(w > 0, assign, -1)
