"""CIFAR VGGs with BatchNorm (RepDistiller ``models/vgg.py``; Fast-Datafree's ``vgg11_bn`` is the same class).

Each torch ``blockK`` is a ``Sequential`` of conv(bias)-BN-ReLU triples whose last
ReLU is applied by the network (so the pre-ReLU map can be a feature); the conv and
BN of triple ``j`` are ``blockK.{3j}`` / ``blockK.{3j+1}``, here ``blockK_{3j}`` etc.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.models.layers import BatchNorm, conv, global_avg_pool, linear, max_pool
from kdjax.models.registry import register

CONFIGS: dict[str, tuple[tuple[int, ...], ...]] = {
    'vgg8': ((64,), (128,), (256,), (512,), (512,)),
    'vgg11': ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    'vgg13': ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    'vgg16': ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    'vgg19': ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


class VGG(nn.Module):
  """feats = [block0, block1..4 (after ReLU, before pooling), pooled]; preact drops the ReLU of 1-4."""
  cfg: Sequence[Sequence[int]]
  num_classes: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               preact: bool = False) -> tuple[jax.Array, list[jax.Array]]:
    h = x.shape[1]
    x = x.astype(self.dtype)
    feats, pre_feats = [], []
    for i, widths in enumerate(self.cfg):
      # The reference only has pool3 for 64x64 inputs; at 32x32 block4 runs at 4x4.
      if i in (1, 2, 3) or (i == 4 and h == 64):
        x = max_pool(x, 2, 2)
      for j, width in enumerate(widths):
        if j:
          x = nn.relu(x)
        x = conv(width, 3, 1, use_bias=True, dtype=self.dtype, name=f'block{i}_{3 * j}')(x)
        x = BatchNorm(dtype=self.dtype, name=f'block{i}_{3 * j + 1}')(x, train)
      pre_feats.append(x)
      x = nn.relu(x)
      feats.append(x)
    pooled = global_avg_pool(x)
    logits = linear(self.num_classes, pooled.shape[-1], dtype=self.dtype, name='classifier',
                    init='normal_001')(pooled)  # the reference's _initialize_weights
    out = ([feats[0]] + pre_feats[1:]) if preact else feats
    return logits.astype(jnp.float32), out + [pooled]


def _register(name: str) -> None:
  register(name)(lambda num_classes, dtype=jnp.float32: VGG(CONFIGS[name], num_classes, dtype))


for _name in CONFIGS:
  _register(_name)
