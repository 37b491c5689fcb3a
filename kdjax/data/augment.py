"""On-device augmentation: pure, jittable functions used inside the train step.

Randomness is per example: ``jax.random.split(key, B)`` gives example ``i`` its own key,
so its crop and flip depend only on (key, i in the global batch). Under ``jit`` that
holds however the batch is sharded, so 1 and 8 devices produce the same batch.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp


def normalize(images: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
  """uint8 (or float in [0, 255]) NHWC -> float32 ``(x / 255 - mean) / std``."""
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return (images.astype(jnp.float32) / 255.0 - mean) / std


def random_crop_flip(key: jax.Array, images: jax.Array, padding: int = 4,
                     flip: bool = True) -> jax.Array:
  """Per-example random crop of the zero-padded image and random horizontal flip.

  Same distribution as torchvision's ``RandomCrop(H, padding=p)`` (black borders,
  offsets uniform in [0, 2p]) followed by ``RandomHorizontalFlip()``. ``padding`` and
  ``flip`` are static. Output has the input's shape and dtype.
  """
  if padding < 0:
    raise ValueError(f'padding must be >= 0, got {padding}')
  if padding == 0 and not flip:
    return images
  batch, height, width, channels = images.shape
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))

  def one(key: jax.Array, image: jax.Array) -> jax.Array:
    crop_key, flip_key = jax.random.split(key)
    dy, dx = jax.random.randint(crop_key, (2,), 0, 2 * padding + 1)
    out = jax.lax.dynamic_slice(image, (dy, dx, 0), (height, width, channels))
    if flip:
      out = jnp.where(jax.random.bernoulli(flip_key), out[:, ::-1], out)
    return out

  return jax.vmap(one)(jax.random.split(key, batch), padded)


def augment(key: jax.Array, images: jax.Array, mean: Sequence[float], std: Sequence[float],
            padding: int = 4, flip: bool = True) -> jax.Array:
  """Crop/flip on the raw pixels (so the padding is black), then normalise."""
  return normalize(random_crop_flip(key, images, padding, flip), mean, std)
