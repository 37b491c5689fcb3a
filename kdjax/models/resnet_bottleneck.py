"""CIFAR ``ResNet50`` (RepDistiller ``models/resnetv2.py``): bottleneck blocks, 3x3 stem, no max-pool."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.models.datafree_resnet import FourStageResNet
from kdjax.models.layers import BatchNorm, conv
from kdjax.models.registry import register

EXPANSION = 4


class Bottleneck(nn.Module):
  planes: int
  stride: int = 1
  dtype: Any = jnp.float32
  shortcut: str = 'shortcut'  # torch name of the projection (torchvision: 'downsample')

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
      x = conv(out_planes, 1, self.stride, padding=0, dtype=self.dtype, name=f'{self.shortcut}_0')(x)
      x = BatchNorm(dtype=self.dtype, name=f'{self.shortcut}_1')(x, train)
    preact = out + x
    return nn.relu(preact), preact


register('ResNet50')(lambda num_classes, dtype=jnp.float32: FourStageResNet(
    (3, 4, 6, 3), num_classes, dtype, block=Bottleneck))
