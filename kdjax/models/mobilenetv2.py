"""RepDistiller ``MobileNetV2`` = ``mobile_half`` (expansion 6, width 0.5, CIFAR strides).

Torch ``blocks.<stage>.<i>.conv.<j>`` maps to ``blocks_<stage>_<i>/conv_<j>`` with
j = 0/1 expand conv/BN, 3/4 depthwise conv/BN, 6/7 projection conv/BN.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.models.layers import BatchNorm, avg_pool, conv, linear
from kdjax.models.registry import register

# (expansion, channels, blocks, stride) at width 1; expansion 'T' is the model's.
SETTINGS = ((1, 16, 1, 1), ('T', 24, 2, 1), ('T', 32, 3, 2), ('T', 64, 4, 2),
            ('T', 96, 3, 1), ('T', 160, 3, 2), ('T', 320, 1, 1))


class InvertedResidual(nn.Module):
  out_planes: int
  stride: int
  expand: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    hidden = x.shape[-1] * self.expand
    # The reference keeps the 1x1 expansion conv even when expand == 1.
    out = conv(hidden, 1, 1, padding=0, dtype=self.dtype, name='conv_0')(x)
    out = nn.relu(BatchNorm(dtype=self.dtype, name='conv_1')(out, train))
    out = conv(hidden, 3, self.stride, groups=hidden, dtype=self.dtype, name='conv_3')(out)
    out = nn.relu(BatchNorm(dtype=self.dtype, name='conv_4')(out, train))
    out = conv(self.out_planes, 1, 1, padding=0, dtype=self.dtype, name='conv_6')(out)
    out = BatchNorm(dtype=self.dtype, name='conv_7')(out, train)
    if self.stride == 1 and x.shape[-1] == self.out_planes:
      out = x + out
    return out


class MobileNetV2(nn.Module):
  """feats = [stem, after blocks 1, 2, 4, 6, pooled]; ``preact`` is accepted and ignored (as in the reference)."""
  num_classes: int
  expansion: int = 6
  width_mult: float = 0.5
  input_size: int = 32  # the reference sizes its head pool from this, not from x
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               preact: bool = False) -> tuple[jax.Array, list[jax.Array]]:
    del preact
    x = x.astype(self.dtype)
    x = conv(int(32 * self.width_mult), 3, 2, dtype=self.dtype, name='conv1_0')(x)
    x = nn.relu(BatchNorm(dtype=self.dtype, name='conv1_1')(x, train))
    feats = [x]
    for stage, (t, c, n, s) in enumerate(SETTINGS):
      expand = self.expansion if t == 'T' else t
      for i in range(n):
        x = InvertedResidual(int(c * self.width_mult), s if i == 0 else 1, expand,
                             dtype=self.dtype, name=f'blocks_{stage}_{i}')(x, train)
      if stage in (1, 2, 4, 6):
        feats.append(x)
    last = int(1280 * self.width_mult) if self.width_mult > 1.0 else 1280
    x = conv(last, 1, 1, padding=0, dtype=self.dtype, name='conv2_0')(x)
    x = nn.relu(BatchNorm(dtype=self.dtype, name='conv2_1')(x, train))
    # AvgPool2d(input_size // 16, ceil_mode=True): a global pool at the design size;
    # flattened channel-major like torch's view(B, -1).
    pooled = avg_pool(x.astype(jnp.float32), self.input_size // 16, ceil_mode=True)
    pooled = pooled.transpose(0, 3, 1, 2).reshape(pooled.shape[0], -1)
    feats.append(pooled)
    logits = linear(self.num_classes, pooled.shape[-1], dtype=self.dtype,
                    name='classifier_0', init='normal_001')(pooled)  # the reference's _initialize_weights
    return logits.astype(jnp.float32), feats


register('MobileNetV2')(lambda num_classes, dtype=jnp.float32: MobileNetV2(num_classes, dtype=dtype))
