"""FitNet hint regressor and loss (spec §2, RepDistiller ``ConvReg`` / ``HintLoss``)."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.models.layers import BatchNorm, torch_padding


def _torch_uniform(fan_in: int):
  """torch's default Conv/ConvTranspose init for weight and bias: U(+-1/sqrt(fan_in))."""
  bound = 1.0 / float(fan_in) ** 0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


class ConvRegressor(nn.Module):
  """Maps the student's hint map (NHWC) to the teacher's shape: conv, BN, ReLU.

  The conv is chosen from the spatial sizes exactly as the reference does:
  ``s_H == 2 t_H`` -> 3x3 stride-2 conv (padding 1); ``2 s_H == t_H`` -> 4x4
  stride-2 transposed conv (torch padding 1); otherwise a valid conv with kernel
  ``(1 + s_H - t_H, 1 + s_W - t_W)``. All convs have a bias and torch's default init.
  Parameter names mirror the torch state dict: ``conv/kernel`` (``conv.weight``;
  ``(kh, kw, I, O)`` for convs, ``(kh, kw, O, I)`` for the transposed conv, i.e. the
  torch ``(I, O, kh, kw)`` weight transposed by ``(2, 3, 1, 0)`` in both cases),
  ``conv/bias``, ``bn/scale``, ``bn/bias``, ``batch_stats/bn/{mean,var}``.
  During distillation call it with ``train=True`` (batch statistics, spec §7).
  """
  s_shape: Sequence[int]  # student map, NHWC
  t_shape: Sequence[int]  # teacher map, NHWC
  use_relu: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    _, s_h, s_w, s_c = self.s_shape
    _, t_h, t_w, t_c = self.t_shape
    if s_h == 2 * t_h:
      x = nn.Conv(t_c, (3, 3), strides=(2, 2), padding=torch_padding(3, 1),
                  kernel_init=_torch_uniform(s_c * 9), bias_init=_torch_uniform(s_c * 9),
                  name='conv')(x)
    elif 2 * s_h == t_h:
      # torch ConvTranspose2d(k=4, s=2, p=1) == dilated conv with padding k-1-p = 2.
      x = nn.ConvTranspose(t_c, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)),
                           transpose_kernel=True, kernel_init=_torch_uniform(t_c * 16),
                           bias_init=_torch_uniform(t_c * 16), name='conv')(x)
    elif s_h >= t_h:
      k = (1 + s_h - t_h, 1 + s_w - t_w)
      fan_in = s_c * k[0] * k[1]
      x = nn.Conv(t_c, k, padding='VALID', kernel_init=_torch_uniform(fan_in),
                  bias_init=_torch_uniform(fan_in), name='conv')(x)
    else:
      raise NotImplementedError(f'student/teacher map shapes {self.s_shape}, {self.t_shape}')
    x = BatchNorm(name='bn')(x, train)
    return nn.relu(x) if self.use_relu else x


def hint_loss(f_s: jax.Array, f_t: jax.Array) -> jax.Array:
  """FitNet hint loss: MSE averaged over every element (``nn.MSELoss()``)."""
  return jnp.mean(jnp.square(f_s.astype(jnp.float32) - f_t.astype(jnp.float32)))
