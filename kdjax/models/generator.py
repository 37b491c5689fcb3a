"""DFKD generator of Fast-Datafree (``datafree/models/generator.py``).

Torch keys ``l1.0`` (Linear) and ``conv_blocks.{0,2,3,6,7,9}`` map to ``l1_0`` and
``conv_blocks_<i>``. The Linear output is laid out channel-major (C, H, W) as torch's
``view`` reads it, and only then moved to NHWC, so imported weights need no permutation.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.models.layers import BatchNorm, conv, linear


def _upsample2(x: jax.Array) -> jax.Array:
  """Nearest-neighbour x2 (torch ``Upsample(scale_factor=2)``)."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class Generator(nn.Module):
  """``apply(vars, z, train=...) -> images`` NHWC in [0, 1] (before dataset normalisation).

  The synthesizers run it in train mode (batch statistics), as the reference does.
  """
  nz: int = 100
  ngf: int = 64
  img_size: int = 32
  nc: int = 3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array, train: bool = False) -> jax.Array:
    init = self.img_size // 4
    c = 2 * self.ngf
    h = linear(c * init * init, self.nz, dtype=self.dtype, name='l1_0')(z.astype(self.dtype))
    h = h.reshape(z.shape[0], c, init, init).transpose(0, 2, 3, 1)
    h = BatchNorm(dtype=self.dtype, name='conv_blocks_0')(h, train)
    # the reference has no init code: torch's defaults (Linear's is linear()'s already)
    h = conv(c, 3, 1, dtype=self.dtype, name='conv_blocks_2', init='torch')(_upsample2(h))
    h = nn.leaky_relu(BatchNorm(dtype=self.dtype, name='conv_blocks_3')(h, train), 0.2)
    h = conv(self.ngf, 3, 1, dtype=self.dtype, name='conv_blocks_6', init='torch')(_upsample2(h))
    h = nn.leaky_relu(BatchNorm(dtype=self.dtype, name='conv_blocks_7')(h, train), 0.2)
    h = conv(self.nc, 3, 1, use_bias=True, dtype=self.dtype, name='conv_blocks_9', init='torch',
             in_features=self.ngf)(h)
    return nn.sigmoid(h.astype(jnp.float32))


def create_generator(nz: int = 100, ngf: int = 64, img_size: int = 32, nc: int = 3,
                     dtype: Any = jnp.float32) -> Generator:
  """The DFKD generator (defaults are the reference constructor's; DAFL scripts use nz=512)."""
  return Generator(nz=nz, ngf=ngf, img_size=img_size, nc=nc, dtype=dtype)
