"""PCA and K-Means++ (kdjax/cluster.py), checked against numpy and known clusterings."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax.cluster import kmeans, pca_fit, pca_transform


def _correlated(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
  # distinct variances along random directions: a well-defined principal basis
  scales = np.linspace(3.0, 0.2, d)
  basis, _ = np.linalg.qr(rng.normal(size=(d, d)))
  return (rng.normal(size=(n, d)) * scales) @ basis.T + rng.normal(size=d)


def test_pca_matches_numpy_svd_up_to_sign():
  rng = np.random.default_rng(0)
  x = _correlated(rng, 300, 12)
  dim = 5
  pca = pca_fit(jnp.asarray(x, jnp.float32), jnp.ones(300), dim)
  chex.assert_shape(pca.mean, (12,))
  chex.assert_shape(pca.components, (dim, 12))
  mean = x.mean(0)
  _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
  np.testing.assert_allclose(pca.mean, mean, rtol=1e-5, atol=1e-5)
  signs = np.sign(np.sum(np.asarray(pca.components) * vt[:dim], axis=1))
  np.testing.assert_allclose(np.asarray(pca.components) * signs[:, None], vt[:dim], atol=2e-4)
  proj = pca_transform(pca, jnp.asarray(x, jnp.float32))
  chex.assert_shape(proj, (300, dim))
  np.testing.assert_allclose(np.asarray(proj) * signs, (x - mean) @ vt[:dim].T, atol=2e-3)


def test_pca_ignores_masked_rows():
  rng = np.random.default_rng(1)
  x = _correlated(rng, 200, 8).astype(np.float32)
  mask = np.arange(200) < 150
  garbage = x.copy()
  garbage[150:] = rng.normal(size=(50, 8)) * 1e3
  garbage[-1] = np.inf
  a = pca_fit(jnp.asarray(x), jnp.asarray(mask), 4)
  b = pca_fit(jnp.asarray(garbage), jnp.asarray(mask), 4)
  chex.assert_trees_all_equal(a, b)
  ref = pca_fit(jnp.asarray(x[:150]), jnp.ones(150), 4)
  chex.assert_trees_all_close(a, ref, atol=1e-4)


def test_pca_rejects_a_dimension_above_the_width():
  with pytest.raises(ValueError, match='PCA dimension 9'):
    pca_fit(jnp.zeros((4, 8)), jnp.ones(4), 9)


def _blobs(rng: np.random.Generator, sizes: list[int], d: int, spread: float = 0.05):
  centres = rng.normal(size=(len(sizes), d)) * 10.0
  labels = np.repeat(np.arange(len(sizes)), sizes)
  x = centres[labels] + rng.normal(size=(len(labels), d)) * spread
  perm = rng.permutation(len(labels))
  return x[perm].astype(np.float32), labels[perm], centres


def test_kmeans_recovers_separated_clusters_and_proportions():
  rng = np.random.default_rng(2)
  sizes = [60, 30, 90, 20]
  x, labels, centres = _blobs(rng, sizes, 6)
  centroids, counts, assign = kmeans(jax.random.PRNGKey(0), jnp.asarray(x), jnp.ones(len(x)),
                                     4, 20)
  chex.assert_shape((centroids, counts, assign), ((4, 6), (4,), (len(x),)))
  chex.assert_type(assign, jnp.int32)
  # each true cluster maps to exactly one found cluster
  match = [int(np.argmin(np.linalg.norm(np.asarray(centroids) - c, axis=1))) for c in centres]
  assert sorted(match) == [0, 1, 2, 3]
  for true, found in enumerate(match):
    np.testing.assert_allclose(centroids[found], x[labels == true].mean(0), atol=1e-4)
    assert float(counts[found]) == sizes[true]
    assert np.all(np.asarray(assign)[labels == true] == found)


def test_kmeans_is_deterministic_given_the_key():
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(500, 5)), jnp.float32)   # no structure: seeds matter
  a = kmeans(jax.random.PRNGKey(7), x, jnp.ones(500), 8, 10)
  b = kmeans(jax.random.PRNGKey(7), x, jnp.ones(500), 8, 10)
  c = kmeans(jax.random.PRNGKey(8), x, jnp.ones(500), 8, 10)
  chex.assert_trees_all_equal(a, b)
  assert not np.array_equal(np.asarray(a[0]), np.asarray(c[0]))


def test_kmeans_ignores_masked_rows():
  rng = np.random.default_rng(4)
  x, labels, _ = _blobs(rng, [40, 40, 40], 3)
  n = len(x)
  mask = np.ones(n, bool)
  mask[::7] = False
  garbage = x.copy()
  garbage[~mask] = 1e4 + rng.normal(size=((~mask).sum(), 3))   # far outliers, if they counted
  key = jax.random.PRNGKey(0)
  a = kmeans(key, jnp.asarray(x), jnp.asarray(mask), 3, 20)
  b = kmeans(key, jnp.asarray(garbage), jnp.asarray(mask), 3, 20)
  chex.assert_trees_all_equal(a, b)
  centroids, counts, assign = a
  assert float(counts.sum()) == mask.sum()
  assert np.all(np.asarray(assign)[~mask] == -1) and np.all(np.asarray(assign)[mask] >= 0)
  for j in range(3):
    np.testing.assert_allclose(centroids[j], x[mask & (np.asarray(assign) == j)].mean(0),
                               atol=1e-4)


def test_kmeans_with_more_clusters_than_distinct_points():
  x = jnp.asarray(np.repeat(np.eye(3, dtype=np.float32), 4, axis=0))  # 3 distinct points
  centroids, counts, _ = kmeans(jax.random.PRNGKey(0), x, jnp.ones(12), 5, 10)
  assert np.all(np.isfinite(np.asarray(centroids)))
  assert float(counts.sum()) == 12 and int((counts > 0).sum()) == 3
  assert sorted(np.asarray(counts)[np.asarray(counts) > 0].tolist()) == [4.0, 4.0, 4.0]


def test_kmeans_blocked_distances_match_unblocked():
  rng = np.random.default_rng(5)
  x, _, _ = _blobs(rng, [50, 70, 33], 4, spread=1.0)
  key = jax.random.PRNGKey(1)
  whole = kmeans(key, jnp.asarray(x), jnp.ones(len(x)), 3, 15)
  blocked = kmeans(key, jnp.asarray(x), jnp.ones(len(x)), 3, 15, block=16)  # 153 = 9.6 blocks
  chex.assert_trees_all_close(whole, blocked, atol=1e-5)
  chex.assert_trees_all_equal(whole[2], blocked[2])
