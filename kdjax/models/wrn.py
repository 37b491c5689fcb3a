"""Pre-activation WideResNets (RepDistiller ``models/wrn.py``; Fast-Datafree's copy is identical).

Torch keys ``block1.layer.0.bn1.weight`` map to ``block1/layer_0/bn1``.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.models.layers import BatchNorm, conv, global_avg_pool, linear
from kdjax.models.registry import register


class WRNBlock(nn.Module):
  out_planes: int
  stride: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, bn1_only: bool = False) -> jax.Array:
    bn1 = BatchNorm(dtype=self.dtype, name='bn1')
    if bn1_only:
      # The reference's preact features re-apply this BN (and in train mode thereby
      # update its running statistics a second time); calling it again keeps that.
      return bn1(x, train)
    equal = x.shape[-1] == self.out_planes
    act = nn.relu(bn1(x, train))
    out = conv(self.out_planes, 3, self.stride, dtype=self.dtype, name='conv1')(act)
    out = nn.relu(BatchNorm(dtype=self.dtype, name='bn2')(out, train))
    out = conv(self.out_planes, 3, 1, dtype=self.dtype, name='conv2')(out)
    # Width change: the shortcut sees the *activated* input, not the raw one.
    shortcut = x if equal else conv(self.out_planes, 1, self.stride, padding=0,
                                    dtype=self.dtype, name='convShortcut')(act)
    return shortcut + out


class NetworkBlock(nn.Module):
  """One stage; exists so the variable tree nests like ``block1.layer.<i>``."""
  out_planes: int
  num_layers: int
  stride: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, bn1_only: bool = False) -> jax.Array:
    for i in range(1 if bn1_only else self.num_layers):
      x = WRNBlock(self.out_planes, self.stride if i == 0 else 1, dtype=self.dtype,
                   name=f'layer_{i}')(x, train, bn1_only)
    return x


class WideResNet(nn.Module):
  """Depth ``6n+4``; feats = [stem conv, block1..3 sums, pooled after the final BN-ReLU]."""
  depth: int
  widen_factor: int
  num_classes: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               preact: bool = False) -> tuple[jax.Array, list[jax.Array]]:
    if (self.depth - 4) % 6:
      raise ValueError(f'WRN depth must be 6n+4, got {self.depth}')
    n = (self.depth - 4) // 6
    k = self.widen_factor
    x = x.astype(self.dtype)
    x = conv(16, 3, 1, dtype=self.dtype, name='conv1')(x)
    feats = [x]
    stages = [NetworkBlock(width, n, stride, dtype=self.dtype, name=f'block{i}')
              for i, (width, stride) in enumerate(zip((16 * k, 32 * k, 64 * k), (1, 2, 2)), start=1)]
    for stage in stages:
      x = stage(x, train)
      feats.append(x)
    final_bn = BatchNorm(dtype=self.dtype, name='bn1')
    pooled = global_avg_pool(nn.relu(final_bn(x, train)))
    logits = linear(self.num_classes, pooled.shape[-1], dtype=self.dtype, name='fc',
                    init='torch_zero_bias')(pooled)  # the reference zeroes the head's bias
    if preact:
      # Reference: "preact" features are the *next* BN applied to each stage output.
      feats = [feats[0],
               stages[1](feats[1], train, bn1_only=True),
               stages[2](feats[2], train, bn1_only=True),
               final_bn(feats[3], train)]
    feats.append(pooled)
    return logits.astype(jnp.float32), feats


def _register(depth: int, k: int) -> None:
  register(f'wrn_{depth}_{k}')(lambda num_classes, dtype=jnp.float32: WideResNet(
      depth, k, num_classes, dtype))


for _depth in (16, 40):
  for _k in (1, 2, 4):
    _register(_depth, _k)
