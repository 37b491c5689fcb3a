"""On-device augmentation: pure, jittable functions used inside the train step (and, for
the data-free synthesizers, differentiable views of synthetic images).

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


def clip_normalized(images: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
  """Clamps normalised images to the range that un-normalises into [0, 1], per channel
  (DeepInversion's ``clip_images`` after every pixel step)."""
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return jnp.clip(images, -mean / std, (1 - mean) / std)


def augment(key: jax.Array, images: jax.Array, mean: Sequence[float], std: Sequence[float],
            padding: int = 4, flip: bool = True) -> jax.Array:
  """Crop/flip on the raw pixels (so the padding is black), then normalise."""
  return normalize(random_crop_flip(key, images, padding, flip), mean, std)


def random_resized_crop(key: jax.Array, images: jax.Array,
                        scale: Sequence[float] = (0.25, 1.0),
                        ratio: Sequence[float] = (3 / 4, 4 / 3)) -> jax.Array:
  """Per-example random resized crop back to the input size (CMI's local view, kornia
  ``RandomResizedCrop(size, scale=[0.25, 1])``), differentiable in ``images``.

  The crop's area fraction is uniform in ``scale`` and its aspect ratio log-uniform in
  ``ratio``; a side longer than the image is clipped to it (torchvision instead retries
  and falls back to a centre crop); the window is placed uniformly inside the image.
  Window and offsets are continuous (no rounding to whole pixels) and the crop is
  resampled bilinearly by ``jax.image.scale_and_translate``. Float NHWC in, same out.
  """
  batch, height, width, _ = images.shape
  log_lo, log_hi = jnp.log(ratio[0]), jnp.log(ratio[1])

  def one(key: jax.Array, image: jax.Array) -> jax.Array:
    k_area, k_ratio, k_pos = jax.random.split(key, 3)
    area = height * width * jax.random.uniform(k_area, (), minval=scale[0], maxval=scale[1])
    aspect = jnp.exp(jax.random.uniform(k_ratio, (), minval=log_lo, maxval=log_hi))
    size = jnp.stack([jnp.clip(jnp.sqrt(area / aspect), 1.0, height),   # h
                      jnp.clip(jnp.sqrt(area * aspect), 1.0, width)])   # w
    offset = jax.random.uniform(k_pos, (2,)) * (jnp.array([height, width]) - size)
    zoom = jnp.array([height, width]) / size
    return jax.image.scale_and_translate(image, image.shape, (0, 1), zoom, -offset * zoom,
                                         method='linear', antialias=False)

  return jax.vmap(one)(jax.random.split(key, batch), images)


def jitter_flip(key: jax.Array, images: jax.Array, max_shift: int,
                flip: bool = True, per_example: bool = True) -> jax.Array:
  """DeepInversion's jitter: roll each image (wrapping around) by offsets uniform in
  ``[-max_shift, max_shift]`` along height and width, then flip it horizontally with
  probability 1/2. The reference draws ONE offset and flip for the whole batch
  (``per_example=False`` reproduces that); by default every example draws its own.
  A permutation of pixels, so differentiable in ``images``. ``max_shift`` is static
  (the reference uses ``int(size / 8)``).
  """
  if max_shift < 0:
    raise ValueError(f'max_shift must be >= 0, got {max_shift}')

  def one(key: jax.Array, image: jax.Array) -> jax.Array:
    shift_key, flip_key = jax.random.split(key)
    dy, dx = jax.random.randint(shift_key, (2,), -max_shift, max_shift + 1)
    out = jnp.roll(image, (dy, dx), axis=(0, 1))
    if flip:
      out = jnp.where(jax.random.bernoulli(flip_key), out[:, ::-1], out)
    return out

  if per_example:
    return jax.vmap(one)(jax.random.split(key, images.shape[0]), images)
  return jax.vmap(one, in_axes=(None, 0))(key, images)
