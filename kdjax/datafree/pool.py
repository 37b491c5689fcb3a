"""The synthetic data pool: a fixed-capacity ring buffer of images, part of the run state.

The reference (Fast-Datafree ``ImagePool``) saves every synthesised batch as PNG files
and trains the student on all of them; kdjax keeps the same uint8 pixels in one array
of ``capacity`` rows (static shape, on the devices, inside the checkpoint), overwriting
the oldest rows once full. Each row also keeps the teacher's logits on the stored image
(its label is their argmax) and, when a method needs them (KDCI), the teacher's
penultimate feature, so dictionaries and class histograms need no second teacher pass.
"""
from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class Pool:
  images: jax.Array        # (capacity, H, W, C) uint8
  labels: jax.Array        # (capacity,) int32, the teacher's argmax on the stored image
  logits: jax.Array        # (capacity, num_classes) float32, the teacher's logits
  features: jax.Array | None   # (capacity, D) float32 teacher features, None when unused
  count: jax.Array         # () int32: valid rows, min(added, capacity)
  cursor: jax.Array        # () int32: next row to write

  @property
  def capacity(self) -> int:
    return self.images.shape[0]


def init_pool(capacity: int, image_shape: tuple[int, ...], num_classes: int,
              feature_dim: int = 0) -> Pool:
  return Pool(images=jnp.zeros((capacity,) + tuple(image_shape), jnp.uint8),
              labels=jnp.zeros((capacity,), jnp.int32),
              logits=jnp.zeros((capacity, num_classes), jnp.float32),
              features=jnp.zeros((capacity, feature_dim), jnp.float32) if feature_dim else None,
              count=jnp.zeros((), jnp.int32), cursor=jnp.zeros((), jnp.int32))


def to_uint8(images01: jax.Array) -> jax.Array:
  """[0, 1] floats -> uint8 as the reference's PNG writer does (clamp, x255, truncate)."""
  return (jnp.clip(images01.astype(jnp.float32), 0.0, 1.0) * 255.0).astype(jnp.uint8)


def add(pool: Pool, images: jax.Array, logits: jax.Array,
        features: jax.Array | None = None) -> Pool:
  """Writes a batch (uint8 images, teacher logits / features) at the cursor, wrapping.

  The batch must not be larger than the pool (checked when the run is configured).
  """
  n = images.shape[0]
  rows = (pool.cursor + jnp.arange(n)) % pool.capacity
  return pool.replace(
      images=pool.images.at[rows].set(images),
      labels=pool.labels.at[rows].set(jnp.argmax(logits, -1).astype(jnp.int32)),
      logits=pool.logits.at[rows].set(logits.astype(jnp.float32)),
      features=None if pool.features is None else pool.features.at[rows].set(
          features.astype(jnp.float32)),
      count=jnp.minimum(pool.count + n, pool.capacity),
      cursor=(pool.cursor + n) % pool.capacity)


def valid_mask(pool: Pool) -> jax.Array:
  """(capacity,) bool: rows holding an image."""
  return jnp.arange(pool.capacity) < pool.count


def class_histogram(pool: Pool, num_classes: int) -> jax.Array:
  """Fraction of the pool's images per teacher class, (num_classes,) summing to 1."""
  counts = jnp.zeros((num_classes,), jnp.float32).at[pool.labels].add(
      valid_mask(pool).astype(jnp.float32))
  return counts / jnp.maximum(counts.sum(), 1.0)


def entropy(p: jax.Array) -> jax.Array:
  """Shannon entropy (nats) of a distribution, 0 log 0 = 0."""
  return jnp.maximum(-jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)), 0.0)
