"""RepDistiller ShuffleNet V1 (groups 3) and V2 (net size 1) for 32x32 inputs.

Both stems are a 1x1 conv (3->24) without pooling, so stage 1 runs at 16x16.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

import functools

from kdjax.models import layers
from kdjax.models.layers import BatchNorm, avg_pool, channel_shuffle, linear
from kdjax.models.registry import register

# RepDistiller's ShuffleNets have no init code: torch's default conv init applies
conv = functools.partial(layers.conv, init='torch')


class ShuffleV1Block(nn.Module):
  out_planes: int
  stride: int
  groups: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    in_planes = x.shape[-1]
    mid = self.out_planes // 4
    # The first block sees the 24-channel stem, which 3 groups do not divide.
    g = 1 if in_planes == 24 else self.groups
    bn = lambda name: BatchNorm(dtype=self.dtype, name=name)
    out = conv(mid, 1, 1, padding=0, groups=g, dtype=self.dtype, name='conv1')(x)
    out = channel_shuffle(nn.relu(bn('bn1')(out, train)), g)
    out = conv(mid, 3, self.stride, groups=mid, dtype=self.dtype, name='conv2')(out)
    out = nn.relu(bn('bn2')(out, train))
    out = conv(self.out_planes, 1, 1, padding=0, groups=self.groups, dtype=self.dtype,
               name='conv3')(out)
    out = bn('bn3')(out, train)
    if self.stride == 2:
      pre = jnp.concatenate([out, avg_pool(x, 3, 2, padding=1)], axis=-1)
    else:
      pre = out + x
    return nn.relu(pre), pre


def _stem(x: jax.Array, train: bool, dtype: Any) -> jax.Array:
  """conv1x1(3->24)-BN-ReLU at full resolution, shared by both ShuffleNets (called inside
  the network's compact ``__call__``, so the layers are its own ``conv1``/``bn1``)."""
  x = conv(24, 1, 1, padding=0, dtype=dtype, name='conv1')(x.astype(dtype))
  return nn.relu(BatchNorm(dtype=dtype, name='bn1')(x, train))


def _head(x: jax.Array, num_classes: int, dtype: Any) -> tuple[jax.Array, jax.Array]:
  """avg_pool(4) on the 4x4 map, flatten, ``linear``: (pooled, float32 logits)."""
  pooled = avg_pool(x.astype(jnp.float32), 4)
  pooled = pooled.transpose(0, 3, 1, 2).reshape(pooled.shape[0], -1)
  logits = linear(num_classes, pooled.shape[-1], dtype=dtype, name='linear')(pooled)
  return pooled, logits.astype(jnp.float32)


class ShuffleNetV1(nn.Module):
  """feats = [stem, stage1..3, pooled]; preact = each stage's last sum/concat before ReLU."""
  num_classes: int
  out_planes: Sequence[int] = (240, 480, 960)
  num_blocks: Sequence[int] = (4, 8, 4)
  groups: int = 3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               preact: bool = False) -> tuple[jax.Array, list[jax.Array]]:
    x = _stem(x, train, self.dtype)
    feats, pre_feats = [x], [x]
    for stage, (planes, n) in enumerate(zip(self.out_planes, self.num_blocks), start=1):
      for i in range(n):
        # Stride-2 blocks concatenate the pooled input, so their branch is narrower.
        branch = planes - x.shape[-1] if i == 0 else planes
        x, pre = ShuffleV1Block(branch, 2 if i == 0 else 1, self.groups, dtype=self.dtype,
                                name=f'layer{stage}_{i}')(x, train)
      feats.append(x)
      pre_feats.append(pre)
    pooled, logits = _head(x, self.num_classes, self.dtype)
    return logits, (pre_feats if preact else feats) + [pooled]


class ShuffleV2Block(nn.Module):
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    c = x.shape[-1] // 2
    x1, x2 = x[..., :c], x[..., c:]
    bn = lambda name: BatchNorm(dtype=self.dtype, name=name)
    out = nn.relu(bn('bn1')(conv(c, 1, 1, padding=0, dtype=self.dtype, name='conv1')(x2), train))
    out = bn('bn2')(conv(c, 3, 1, groups=c, dtype=self.dtype, name='conv2')(out), train)
    pre = bn('bn3')(conv(c, 1, 1, padding=0, dtype=self.dtype, name='conv3')(out), train)
    out = jnp.concatenate([x1, nn.relu(pre)], axis=-1)
    # The reference's preact is not shuffled.
    return channel_shuffle(out, 2), jnp.concatenate([x1, pre], axis=-1)


class ShuffleV2Down(nn.Module):
  out_planes: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    cin, mid = x.shape[-1], self.out_planes // 2
    bn = lambda name: BatchNorm(dtype=self.dtype, name=name)
    left = bn('bn1')(conv(cin, 3, 2, groups=cin, dtype=self.dtype, name='conv1')(x), train)
    left = nn.relu(bn('bn2')(conv(mid, 1, 1, padding=0, dtype=self.dtype, name='conv2')(left), train))
    right = nn.relu(bn('bn3')(conv(mid, 1, 1, padding=0, dtype=self.dtype, name='conv3')(x), train))
    right = bn('bn4')(conv(mid, 3, 2, groups=mid, dtype=self.dtype, name='conv4')(right), train)
    right = nn.relu(bn('bn5')(conv(mid, 1, 1, padding=0, dtype=self.dtype, name='conv5')(right), train))
    return channel_shuffle(jnp.concatenate([left, right], axis=-1), 2)


class ShuffleNetV2(nn.Module):
  """feats = [stem, stage1..3, pooled]; preact = last block's unshuffled concat before ReLU."""
  num_classes: int
  out_channels: Sequence[int] = (116, 232, 464, 1024)
  num_blocks: Sequence[int] = (3, 7, 3)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               preact: bool = False) -> tuple[jax.Array, list[jax.Array]]:
    x = _stem(x, train, self.dtype)
    feats, pre_feats = [x], [x]
    for stage, (planes, n) in enumerate(zip(self.out_channels[:3], self.num_blocks), start=1):
      x = ShuffleV2Down(planes, dtype=self.dtype, name=f'layer{stage}_0')(x, train)
      for i in range(1, n + 1):
        x, pre = ShuffleV2Block(dtype=self.dtype, name=f'layer{stage}_{i}')(x, train)
      feats.append(x)
      pre_feats.append(pre)
    x = conv(self.out_channels[3], 1, 1, padding=0, dtype=self.dtype, name='conv2')(x)
    x = nn.relu(BatchNorm(dtype=self.dtype, name='bn2')(x, train))
    pooled, logits = _head(x, self.num_classes, self.dtype)
    return logits, (pre_feats if preact else feats) + [pooled]


register('ShuffleV1')(lambda num_classes, dtype=jnp.float32: ShuffleNetV1(num_classes, dtype=dtype))
register('ShuffleV2')(lambda num_classes, dtype=jnp.float32: ShuffleNetV2(num_classes, dtype=dtype))
