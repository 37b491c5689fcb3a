"""Differentiable augmentations of the data-free synthesizers (kdjax/data/augment.py)."""
from __future__ import annotations

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax.data.augment import jitter_flip, random_resized_crop


def _images(b=6, h=8, w=8, c=3, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(b, h, w, c)), jnp.float32)


def _which_transform(out: np.ndarray, img: np.ndarray, m: int):
  """All (dy, dx, flipped) whose roll(+flip) of ``img`` gives ``out`` (numpy, by search)."""
  hits = []
  for dy, dx, f in itertools.product(range(-m, m + 1), range(-m, m + 1), (False, True)):
    cand = np.roll(img, (dy, dx), axis=(0, 1))
    if f:
      cand = cand[:, ::-1]
    if np.array_equal(cand, out):
      hits.append((dy, dx, f))
  return hits


@pytest.mark.parametrize('per_example', [True, False])
def test_jitter_flip_is_a_roll_and_flip_per_example(per_example):
  x = _images(b=16)
  fn = jax.jit(lambda k, x: jitter_flip(k, x, 2, per_example=per_example))
  out = np.asarray(fn(jax.random.key(1), x))
  chex.assert_shape(out, x.shape)
  chex.assert_type(out, jnp.float32)
  found = [_which_transform(out[i], np.asarray(x[i]), 2) for i in range(len(x))]
  assert all(len(h) == 1 for h in found)  # random images: the transform is identifiable
  distinct = {h[0] for h in found}
  if per_example:
    assert len(distinct) > 1
    assert {f for (_, _, f) in distinct} == {False, True}
  else:
    assert len(distinct) == 1
  # same key, same result; the transform is a permutation, so the VJP undoes it
  np.testing.assert_array_equal(fn(jax.random.key(1), x), out)
  w = _images(b=16, seed=1)
  g = jax.grad(lambda x: jnp.sum(fn(jax.random.key(1), x) * w))(x)
  np.testing.assert_array_equal(fn(jax.random.key(1), g), w)
  with pytest.raises(ValueError, match='max_shift'):
    jitter_flip(jax.random.key(0), x, -1)


def test_random_resized_crop_identity_and_constant():
  x = _images()
  ident = jax.jit(lambda k, x: random_resized_crop(k, x, scale=(1.0, 1.0), ratio=(1.0, 1.0)))
  np.testing.assert_allclose(ident(jax.random.key(0), x), x, atol=1e-6)
  const = jnp.full((4, 16, 16, 3), 0.7, jnp.float32)
  np.testing.assert_allclose(random_resized_crop(jax.random.key(0), const), const, atol=1e-6)


def test_random_resized_crop_geometry_per_example():
  """On ramp images the crop's zoom is readable: slope of a row = w / W, of a column = h / H."""
  b, size = 64, 32
  yy, xx = np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32),
                       indexing='ij')
  ramp = jnp.asarray(np.broadcast_to(np.stack([xx, yy], -1), (b, size, size, 2)))
  out = np.asarray(jax.jit(random_resized_crop)(jax.random.key(3), ramp))
  chex.assert_shape(out, ramp.shape)
  mid = size // 2
  sx = out[:, mid, mid + 1, 0] - out[:, mid, mid, 0]   # = w / W
  sy = out[:, mid + 1, mid, 1] - out[:, mid, mid, 1]   # = h / H
  area, aspect = sx * sy, sx / sy
  assert np.all(area >= 0.25 - 1e-4) and np.all(area <= 1 + 1e-4)
  assert np.all(aspect >= 3 / 4 - 1e-3) and np.all(aspect <= 4 / 3 + 1e-3)
  assert area.max() - area.min() > 0.3          # examples draw their own crops
  # the window lies inside the image
  assert out[..., 0].min() >= -1e-4 and out[..., 0].max() <= size - 1 + 1e-4


def test_random_resized_crop_is_differentiable():
  x = _images(b=4, h=16, w=16)
  w = _images(b=4, h=16, w=16, seed=5)
  f = jax.jit(lambda x: jnp.sum(random_resized_crop(jax.random.key(7), x) * w))
  g = jax.grad(f)(x)
  chex.assert_shape(g, x.shape)
  assert np.all(np.isfinite(g)) and float(jnp.abs(g).max()) > 0
  # linear in x: the directional derivative is exact
  v = _images(b=4, h=16, w=16, seed=6)
  np.testing.assert_allclose(float(jnp.vdot(g, v)), float(f(x + v) - f(x)), rtol=1e-3, atol=1e-3)


def test_clip_normalized_bounds_each_channel():
  from kdjax.data.augment import clip_normalized, normalize
  mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
  x = _images(b=4, seed=9) * 5
  out = np.asarray(clip_normalized(x, mean, std))
  pixels = out * np.asarray(std) + np.asarray(mean)
  assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6
  inside = (np.asarray(x) * std + np.asarray(mean) >= 0) & (np.asarray(x) * std + np.asarray(mean) <= 1)
  np.testing.assert_array_equal(out[inside], np.asarray(x)[inside])
  # normalised uint8 images are already in range
  img = normalize(jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3))), mean, std)
  np.testing.assert_allclose(clip_normalized(img, mean, std), img, atol=1e-6)
