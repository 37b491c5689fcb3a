"""CIFAR ResNets of the KD benchmarks (RepDistiller ``models/resnet.py``).

Submodule names follow the torch state-dict keys with ``.i`` folded into ``_i``
(``layer1.0.downsample.1`` -> ``layer1_0/downsample_1``) so checkpoints convert
mechanically (see ``kdjax.models.torch_import``).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.models.layers import BatchNorm, conv, linear
from kdjax.models.registry import register


class BasicBlock(nn.Module):
  planes: int
  stride: int = 1
  dtype: Any = jnp.float32
  shortcut: str = 'downsample'  # torch name of the projection (Fast-Datafree: 'shortcut')

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    out = conv(self.planes, 3, self.stride, dtype=self.dtype, name='conv1')(x)
    out = nn.relu(BatchNorm(dtype=self.dtype, name='bn1')(out, train))
    out = conv(self.planes, 3, 1, dtype=self.dtype, name='conv2')(out)
    out = BatchNorm(dtype=self.dtype, name='bn2')(out, train)
    if self.stride != 1 or x.shape[-1] != self.planes:
      x = conv(self.planes, 1, self.stride, padding=0, dtype=self.dtype, name=f'{self.shortcut}_0')(x)
      x = BatchNorm(dtype=self.dtype, name=f'{self.shortcut}_1')(x, train)
    preact = out + x
    return nn.relu(preact), preact


class CifarResNet(nn.Module):
  """Depth ``6n+2``; ``widths`` = (stem, stage1, stage2, stage3)."""
  depth: int
  widths: Sequence[int]
  num_classes: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               preact: bool = False) -> tuple[jax.Array, list[jax.Array]]:
    n = (self.depth - 2) // 6
    x = x.astype(self.dtype)
    x = conv(self.widths[0], 3, 1, dtype=self.dtype, name='conv1')(x)
    x = nn.relu(BatchNorm(dtype=self.dtype, name='bn1')(x, train))
    feats, pre_feats = [x], [x]
    for stage, (width, stride) in enumerate(zip(self.widths[1:], (1, 2, 2)), start=1):
      for i in range(n):
        x, pre = BasicBlock(width, stride if i == 0 else 1, dtype=self.dtype,
                            name=f'layer{stage}_{i}')(x, train)
      feats.append(x)
      pre_feats.append(pre)
    pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    feats.append(pooled)
    pre_feats.append(pooled)
    logits = linear(self.num_classes, pooled.shape[-1], dtype=self.dtype, name='fc')(pooled)
    return logits.astype(jnp.float32), (pre_feats if preact else feats)


def _register(name: str, depth: int, widths: Sequence[int]) -> None:
  register(name)(lambda num_classes, dtype=jnp.float32: CifarResNet(
      depth, tuple(widths), num_classes, dtype))


for _depth in (8, 14, 20, 32, 44, 56, 110):
  _register(f'resnet{_depth}', _depth, (16, 16, 32, 64))
_register('resnet8x4', 8, (32, 64, 128, 256))
_register('resnet32x4', 32, (32, 64, 128, 256))
