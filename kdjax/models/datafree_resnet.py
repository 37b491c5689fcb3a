"""Data-free-KD CIFAR ResNets (Fast-Datafree ``classifiers/resnet.py``, the DAFL version).

ImageNet-style BasicBlock stages 64/128/256/512 but with a 3x3 stride-1 stem and no
max-pool. The reference only exposes the pooled ``feature``; kdjax additionally returns
the stem and stage outputs so feature methods can use these networks too.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.models.layers import BatchNorm, conv, global_avg_pool, linear
from kdjax.models.registry import register


class DFBasicBlock(nn.Module):
  planes: int
  stride: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    out = conv(self.planes, 3, self.stride, dtype=self.dtype, name='conv1')(x)
    out = nn.relu(BatchNorm(dtype=self.dtype, name='bn1')(out, train))
    out = conv(self.planes, 3, 1, dtype=self.dtype, name='conv2')(out)
    out = BatchNorm(dtype=self.dtype, name='bn2')(out, train)
    if self.stride != 1 or x.shape[-1] != self.planes:
      x = conv(self.planes, 1, self.stride, padding=0, dtype=self.dtype, name='shortcut_0')(x)
      x = BatchNorm(dtype=self.dtype, name='shortcut_1')(x, train)
    preact = out + x
    return nn.relu(preact), preact


class DataFreeResNet(nn.Module):
  """feats = [stem, layer1..4, pooled]; ``feats[-1]`` is the reference's ``feature``."""
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
        x, pre = DFBasicBlock(planes, stride if i == 0 else 1, dtype=self.dtype,
                              name=f'layer{stage}_{i}')(x, train)
      feats.append(x)
      pre_feats.append(pre)
    pooled = global_avg_pool(x)
    logits = linear(self.num_classes, pooled.shape[-1], dtype=self.dtype, name='linear')(pooled)
    return logits.astype(jnp.float32), (pre_feats if preact else feats) + [pooled]


def _register(name: str, blocks: Sequence[int]) -> None:
  register(name)(lambda num_classes, dtype=jnp.float32: DataFreeResNet(
      tuple(blocks), num_classes, dtype))


_register('resnet18', (2, 2, 2, 2))
_register('resnet34', (3, 4, 6, 3))
# One block per stage: same code paths as resnet18 at a tenth of the size (the fixture's model).
_register('resnet_basic_1111', (1, 1, 1, 1))
