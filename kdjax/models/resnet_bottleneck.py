"""CIFAR ``ResNet50`` (RepDistiller ``models/resnetv2.py``): bottleneck blocks, 3x3 stem, no max-pool."""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.models.layers import BatchNorm, conv, global_avg_pool, linear
from kdjax.models.registry import register

EXPANSION = 4


class Bottleneck(nn.Module):
  planes: int
  stride: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    out_planes = EXPANSION * self.planes
    out = conv(self.planes, 1, 1, padding=0, dtype=self.dtype, name='conv1')(x)
    out = nn.relu(BatchNorm(dtype=self.dtype, name='bn1')(out, train))
    out = conv(self.planes, 3, self.stride, dtype=self.dtype, name='conv2')(out)
    out = nn.relu(BatchNorm(dtype=self.dtype, name='bn2')(out, train))
    out = conv(out_planes, 1, 1, padding=0, dtype=self.dtype, name='conv3')(out)
    out = BatchNorm(dtype=self.dtype, name='bn3')(out, train)
    if self.stride != 1 or x.shape[-1] != out_planes:
      x = conv(out_planes, 1, self.stride, padding=0, dtype=self.dtype, name='shortcut_0')(x)
      x = BatchNorm(dtype=self.dtype, name='shortcut_1')(x, train)
    preact = out + x
    return nn.relu(preact), preact


class BottleneckResNet(nn.Module):
  """feats = [stem, layer1..4 outputs, pooled]; preact swaps in the last block's residual sums."""
  num_blocks: Sequence[int]
  num_classes: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               preact: bool = False) -> tuple[jax.Array, list[jax.Array]]:
    x = x.astype(self.dtype)
    x = conv(64, 3, 1, dtype=self.dtype, name='conv1')(x)
    x = nn.relu(BatchNorm(dtype=self.dtype, name='bn1')(x, train))
    feats, pre_feats = [x], [x]
    for stage, (planes, stride, n) in enumerate(
        zip((64, 128, 256, 512), (1, 2, 2, 2), self.num_blocks), start=1):
      for i in range(n):
        x, pre = Bottleneck(planes, stride if i == 0 else 1, dtype=self.dtype,
                            name=f'layer{stage}_{i}')(x, train)
      feats.append(x)
      pre_feats.append(pre)
    pooled = global_avg_pool(x)
    logits = linear(self.num_classes, pooled.shape[-1], dtype=self.dtype, name='linear')(pooled)
    return logits.astype(jnp.float32), (pre_feats if preact else feats) + [pooled]


register('ResNet50')(lambda num_classes, dtype=jnp.float32: BottleneckResNet(
    (3, 4, 6, 3), num_classes, dtype))
