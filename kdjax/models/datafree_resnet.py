"""Data-free-KD CIFAR ResNets (Fast-Datafree ``classifiers/resnet.py``, the DAFL version).

ImageNet-style BasicBlock stages 64/128/256/512 but with a 3x3 stride-1 stem and no
max-pool. The reference only exposes the pooled ``feature``; kdjax additionally returns
the stem and stage outputs so feature methods can use these networks too.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.models.cifar_resnet import BasicBlock
from kdjax.models.layers import BatchNorm, conv, global_avg_pool, linear
from kdjax.models.registry import register


class FourStageResNet(nn.Module):
  """3x3 stem, four stages of ``block`` (64/128/256/512 planes), global pool, linear.

  feats = [stem, layer1..4, pooled] (``feats[-1]`` is the reference's ``feature``);
  preact swaps in each stage's last residual sum. ``block`` is the basic block here and
  the bottleneck for ``ResNet50`` (resnet_bottleneck.py).
  """
  num_blocks: Sequence[int]
  num_classes: int
  dtype: Any = jnp.float32
  block: Callable[..., nn.Module] = functools.partial(BasicBlock, shortcut='shortcut')

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
        x, pre = self.block(planes, stride if i == 0 else 1, dtype=self.dtype,
                            name=f'layer{stage}_{i}')(x, train)
      feats.append(x)
      pre_feats.append(pre)
    pooled = global_avg_pool(x)
    logits = linear(self.num_classes, pooled.shape[-1], dtype=self.dtype, name='linear')(pooled)
    return logits.astype(jnp.float32), (pre_feats if preact else feats) + [pooled]


def _register(name: str, blocks: Sequence[int]) -> None:
  register(name)(lambda num_classes, dtype=jnp.float32: FourStageResNet(
      tuple(blocks), num_classes, dtype))


_register('resnet18', (2, 2, 2, 2))
_register('resnet34', (3, 4, 6, 3))
# One block per stage: same code paths as resnet18 at a tenth of the size (the fixture's model).
_register('resnet_basic_1111', (1, 1, 1, 1))
