"""ImageNet students and teachers in torchvision's layout.

``imagenet_resnet{18,34,50}``: torchvision ``resnet18/34/50`` (7x7 stride-2 stem, 3x3
stride-2 max-pool, four stages, stride on the 3x3 conv of the bottleneck as in
torchvision's "v1.5"). ``imagenet_mobilenetv1``: the MobileNet (width 1) that the
ImageNet KD papers distil ResNet-50 into (a ``model`` Sequential of conv-BN-ReLU and
depthwise-separable blocks, ``fc``). ``imagenet_mobilenetv2``: torchvision
``mobilenet_v2`` (ReLU6, width 1; the classifier's dropout is left out because the train
step has no dropout RNG). Module names are the torch state-dict keys with ``.i`` folded
into ``_i`` so ``kdjax.convert`` imports torchvision checkpoints unchanged.

feats: ResNets [stem (before the max-pool), layer1..4, pooled]; MobileNetV1 the outputs
at strides 4/8/16/32 and the pooled vector; MobileNetV2 likewise. Pools are global, so
any input size works (224 is the design size).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.models.cifar_resnet import BasicBlock
from kdjax.models.layers import BatchNorm, conv, global_avg_pool, linear, max_pool
from kdjax.models.registry import register
from kdjax.models.resnet_bottleneck import Bottleneck


class ImageNetResNet(nn.Module):
  """torchvision ResNet; ``preact`` swaps in each stage's last residual sum."""
  num_blocks: Sequence[int]
  num_classes: int
  dtype: Any = jnp.float32
  block: Callable[..., nn.Module] = BasicBlock

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               preact: bool = False) -> tuple[jax.Array, list[jax.Array]]:
    x = x.astype(self.dtype)
    x = conv(64, 7, 2, dtype=self.dtype, name='conv1')(x)
    x = nn.relu(BatchNorm(dtype=self.dtype, name='bn1')(x, train))
    feats, pre_feats = [x], [x]
    x = max_pool(x, 3, 2, padding=1)
    for stage, (planes, stride, n) in enumerate(
        zip((64, 128, 256, 512), (1, 2, 2, 2), self.num_blocks), start=1):
      for i in range(n):
        x, pre = self.block(planes, stride if i == 0 else 1, dtype=self.dtype,
                            name=f'layer{stage}_{i}')(x, train)
      feats.append(x)
      pre_feats.append(pre)
    pooled = global_avg_pool(x)
    logits = linear(self.num_classes, pooled.shape[-1], dtype=self.dtype, name='fc')(pooled)
    return logits.astype(jnp.float32), (pre_feats if preact else feats) + [pooled]


def _conv_bn(x: jax.Array, features: int, kernel: int, stride: int, groups: int, train: bool,
             dtype: Any, conv_name: str, bn_name: str, act: Callable = nn.relu) -> jax.Array:
  x = conv(features, kernel, stride, groups=groups, dtype=dtype, name=conv_name)(x)
  x = BatchNorm(dtype=dtype, name=bn_name)(x, train)
  return act(x) if act is not None else x


# MobileNetV1: (output channels, stride) of the 13 depthwise-separable blocks after the stem.
V1_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
             (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))
V1_FEATURES = (3, 5, 11, 13)  # indices in ``model`` whose outputs are returned (strides 4..32)


class MobileNetV1(nn.Module):
  """``model.0`` = conv3x3(32, s2)-BN-ReLU; ``model.i`` = depthwise 3x3 (``.0``/``.1``),
  pointwise 1x1 (``.3``/``.4``), each with BN and ReLU; global pool; ``fc``.
  ``preact`` is accepted and ignored (there are no residual sums)."""
  num_classes: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               preact: bool = False) -> tuple[jax.Array, list[jax.Array]]:
    del preact
    d = self.dtype
    x = _conv_bn(x.astype(d), 32, 3, 2, 1, train, d, 'model_0_0', 'model_0_1')
    feats = []
    for i, (out, stride) in enumerate(V1_BLOCKS, start=1):
      x = _conv_bn(x, x.shape[-1], 3, stride, x.shape[-1], train, d, f'model_{i}_0', f'model_{i}_1')
      x = _conv_bn(x, out, 1, 1, 1, train, d, f'model_{i}_3', f'model_{i}_4')
      if i in V1_FEATURES:
        feats.append(x)
    pooled = global_avg_pool(x)
    logits = linear(self.num_classes, pooled.shape[-1], dtype=d, name='fc')(pooled)
    return logits.astype(jnp.float32), feats + [pooled]


# torchvision mobilenet_v2: (expansion, channels, blocks, first stride).
V2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
               (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
V2_FEATURES = (3, 6, 13)  # ``features`` indices returned (strides 4, 8, 16; 32 is the last conv)


class _V2Block(nn.Module):
  """torchvision InvertedResidual: ``conv.0`` expand (absent when t = 1), then depthwise,
  then the linear projection conv and its BN, numbered in that order."""
  out_planes: int
  stride: int
  expand: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    d, relu6 = self.dtype, jax.nn.relu6
    hidden = x.shape[-1] * self.expand
    out, j = x, 0
    if self.expand != 1:
      out = _conv_bn(out, hidden, 1, 1, 1, train, d, 'conv_0_0', 'conv_0_1', relu6)
      j = 1
    out = _conv_bn(out, hidden, 3, self.stride, hidden, train, d, f'conv_{j}_0', f'conv_{j}_1',
                   relu6)
    out = _conv_bn(out, self.out_planes, 1, 1, 1, train, d, f'conv_{j + 1}', f'conv_{j + 2}',
                   None)
    if self.stride == 1 and x.shape[-1] == self.out_planes:
      out = x + out
    return out


class MobileNetV2(nn.Module):
  """torchvision ``mobilenet_v2`` at width 1 (``features.0..18``, ``classifier.1``)."""
  num_classes: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               preact: bool = False) -> tuple[jax.Array, list[jax.Array]]:
    del preact
    d = self.dtype
    x = _conv_bn(x.astype(d), 32, 3, 2, 1, train, d, 'features_0_0', 'features_0_1',
                 jax.nn.relu6)
    feats, index = [], 1
    for t, c, n, s in V2_SETTINGS:
      for i in range(n):
        x = _V2Block(c, s if i == 0 else 1, t, dtype=d, name=f'features_{index}')(x, train)
        if index in V2_FEATURES:
          feats.append(x)
        index += 1
    x = _conv_bn(x, 1280, 1, 1, 1, train, d, f'features_{index}_0', f'features_{index}_1',
                 jax.nn.relu6)
    feats.append(x)
    pooled = global_avg_pool(x)
    logits = linear(self.num_classes, pooled.shape[-1], dtype=d, name='classifier_1')(pooled)
    return logits.astype(jnp.float32), feats + [pooled]


_RESNETS = {'imagenet_resnet18': ((2, 2, 2, 2), BasicBlock),
            'imagenet_resnet34': ((3, 4, 6, 3), BasicBlock),
            'imagenet_resnet50': ((3, 4, 6, 3), functools.partial(Bottleneck,
                                                                   shortcut='downsample'))}
for _name, (_blocks, _block) in _RESNETS.items():
  register(_name)(functools.partial(
      lambda num_classes, dtype=jnp.float32, blocks=(), block=None: ImageNetResNet(
          tuple(blocks), num_classes, dtype, block), blocks=_blocks, block=_block))
register('imagenet_mobilenetv1')(lambda num_classes, dtype=jnp.float32: MobileNetV1(
    num_classes, dtype))
register('imagenet_mobilenetv2')(lambda num_classes, dtype=jnp.float32: MobileNetV2(
    num_classes, dtype))
