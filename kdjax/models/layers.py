"""Layers that reproduce PyTorch numerics where Flax's defaults differ."""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any


def torch_padding(kernel: int, padding: int | None = None) -> tuple[tuple[int, int], tuple[int, int]]:
  """Symmetric padding as in torch ``Conv2d(padding=p)``.

  Flax's 'SAME' pads (0, 1) for stride-2 convolutions on even inputs while torch pads
  (1, 1); the reference weights only reproduce with the torch convention.
  """
  p = kernel // 2 if padding is None else padding
  return ((p, p), (p, p))


def _torch_uniform(fan_in: int):
  """torch's default ``Linear``/``Conv2d`` init (``kaiming_uniform_(a=sqrt(5))`` for the
  weight, the same bound for the bias): uniform in +-1/sqrt(fan_in)."""
  bound = 1.0 / float(fan_in) ** 0.5
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


# Weight inits of the reference models (methods.md §1 zoo): RepDistiller's ResNets,
# WRNs, VGGs and MobileNetV2 use He fan-out normal convs; its ShuffleNets and the
# Fast-Datafree generator have no init code, so torch's default applies.
CONV_INITS = ('he_fan_out', 'torch')
# heads: torch's default; torch's default weight with zero bias (WRN); normal(0, 0.01)
# with zero bias (VGG, MobileNetV2)
LINEAR_INITS = ('torch', 'torch_zero_bias', 'normal_001')


def conv(features: int, kernel: int = 3, stride: int = 1, padding: int | None = None,
         groups: int = 1, use_bias: bool = False, dtype: Dtype = jnp.float32,
         name: str | None = None, init: str = 'he_fan_out', in_features: int = 0) -> nn.Conv:
  """``nn.Conv`` with torch-style symmetric padding, no bias and He (fan-out) init, or
  with ``init='torch'`` torch's default: weight (and bias) uniform in +-1/sqrt(fan_in),
  fan_in = in_features / groups * kernel^2 (the weight's from its shape; a torch-init
  bias needs ``in_features``)."""
  if init not in CONV_INITS:
    raise ValueError(f'unknown conv init {init!r}; accepted: {", ".join(CONV_INITS)}')
  kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
  bias_init = nn.initializers.zeros
  if init == 'torch':
    kernel_init = lambda key, shape, dtype=jnp.float32: _torch_uniform(
        int(np.prod(shape[:-1])))(key, shape, dtype)
    if use_bias:
      if in_features <= 0:
        raise ValueError("conv(init='torch', use_bias=True) needs in_features")
      bias_init = _torch_uniform(in_features // groups * kernel * kernel)
  return nn.Conv(
      features, (kernel, kernel), strides=(stride, stride),
      padding=torch_padding(kernel, padding), feature_group_count=groups,
      use_bias=use_bias, dtype=dtype, kernel_init=kernel_init, bias_init=bias_init, name=name)


class BatchNorm(nn.Module):
  """BatchNorm with torch semantics.

  Normalises with the biased batch variance in training but updates the running
  variance with the unbiased one (torch does; Flax uses the biased one), momentum 0.1,
  eps 1e-5. Statistics are computed in float32 whatever the compute dtype. Under
  ``jit`` with a batch sharded over devices the mean is over the global batch, i.e.
  synchronised BatchNorm.

  The input is sown into the ``'intermediates'`` collection as ``bn_input`` (a no-op
  unless the caller makes that collection mutable), so the data-free BN-statistics loss
  reads every layer's input functionally (``kdjax.models.capture``), without hooks.
  """
  momentum: float = 0.1
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  reduce_axes: Sequence[int] | None = None  # default: all but the last

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    self.sow('intermediates', 'bn_input', x)
    features = x.shape[-1]
    axes = tuple(range(x.ndim - 1)) if self.reduce_axes is None else tuple(self.reduce_axes)
    scale = self.param('scale', nn.initializers.ones, (features,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (features,), jnp.float32)
    ra_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros((features,), jnp.float32))
    ra_var = self.variable('batch_stats', 'var', lambda: jnp.ones((features,), jnp.float32))
    x32 = x.astype(jnp.float32)
    if train:
      mean = jnp.mean(x32, axis=axes)
      var = jnp.mean(jnp.square(x32 - mean), axis=axes)
      if not self.is_initializing():
        n = 1
        for a in axes:
          n *= x.shape[a]
        unbiased = var * (n / max(n - 1, 1))
        ra_mean.value = (1 - self.momentum) * ra_mean.value + self.momentum * mean
        ra_var.value = (1 - self.momentum) * ra_var.value + self.momentum * unbiased
    else:
      mean, var = ra_mean.value, ra_var.value
    y = (x32 - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias
    return y.astype(self.dtype)


def linear(features: int, fan_in: int, use_bias: bool = True, dtype: Dtype = jnp.float32,
           name: str | None = None, init: str = 'torch') -> nn.Dense:
  """``nn.Dense`` initialised like torch ``nn.Linear`` (uniform in +-1/sqrt(fan_in)), or
  as a reference model re-initialises its head (``LINEAR_INITS``)."""
  if init not in LINEAR_INITS:
    raise ValueError(f'unknown linear init {init!r}; accepted: {", ".join(LINEAR_INITS)}')
  kernel_init = nn.initializers.normal(0.01) if init == 'normal_001' else _torch_uniform(fan_in)
  bias_init = _torch_uniform(fan_in) if init == 'torch' else nn.initializers.zeros
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, kernel_init=kernel_init,
                  bias_init=bias_init, name=name)


def _pool_pads(size: int, kernel: int, stride: int, padding: int,
               ceil_mode: bool) -> tuple[int, int]:
  """(low, high) padding reproducing torch's output size, including ``ceil_mode``.

  In ceil mode torch adds one extra window if it starts inside the (left-padded)
  input; that window may run past the end, so we pad the high side just enough.
  """
  span = size + 2 * padding - kernel
  out = (-(-span // stride) if ceil_mode else span // stride) + 1
  if ceil_mode and (out - 1) * stride >= size + padding:
    out -= 1
  high = max((out - 1) * stride + kernel - size - padding, 0)
  return padding, high


def _window_counts(size: int, kernel: int, stride: int, padding: int, out: int,
                   count_include_pad: bool) -> np.ndarray:
  """Per-axis torch divisor: the window clipped to the padded input (or to the input)."""
  start = np.arange(out) * stride - padding
  end = np.minimum(start + kernel, size + padding)
  if not count_include_pad:
    start, end = np.maximum(start, 0), np.minimum(end, size)
  return (end - start).astype(np.float32)


def avg_pool(x: jax.Array, kernel: int, stride: int | None = None, padding: int = 0,
             ceil_mode: bool = False, count_include_pad: bool = True) -> jax.Array:
  """torch ``F.avg_pool2d`` on NHWC (stats in float32).

  torch divides by the window clipped to the *padded* input when
  ``count_include_pad`` (the default), i.e. zeros of the explicit padding count
  but the overhang of a ceil-mode window does not.
  """
  stride = kernel if stride is None else stride
  (hl, hh) = _pool_pads(x.shape[1], kernel, stride, padding, ceil_mode)
  (wl, wh) = _pool_pads(x.shape[2], kernel, stride, padding, ceil_mode)
  dims, strides = (1, kernel, kernel, 1), (1, stride, stride, 1)
  pads = ((0, 0), (hl, hh), (wl, wh), (0, 0))
  x32 = x.astype(jnp.float32)
  summed = jax.lax.reduce_window(x32, 0.0, jax.lax.add, dims, strides, pads)
  count = (_window_counts(x.shape[1], kernel, stride, padding, summed.shape[1], count_include_pad)[:, None]
           * _window_counts(x.shape[2], kernel, stride, padding, summed.shape[2], count_include_pad)[None, :])
  count = jnp.asarray(count, jnp.float32)[None, :, :, None]
  return (summed / count).astype(x.dtype)


def max_pool(x: jax.Array, kernel: int, stride: int | None = None, padding: int = 0,
             ceil_mode: bool = False) -> jax.Array:
  """torch ``F.max_pool2d`` on NHWC (padding never wins the max)."""
  stride = kernel if stride is None else stride
  pads = ((0, 0), _pool_pads(x.shape[1], kernel, stride, padding, ceil_mode),
          _pool_pads(x.shape[2], kernel, stride, padding, ceil_mode), (0, 0))
  # a numpy (concrete) init lets jax see the max monoid; a jnp constant traced under jit
  # makes it a generic reduce_window, which has no reverse-mode derivative
  return jax.lax.reduce_window(x, np.array(-np.inf, x.dtype), jax.lax.max,
                               (1, kernel, kernel, 1), (1, stride, stride, 1), pads)


def global_avg_pool(x: jax.Array) -> jax.Array:
  """Adaptive average pool to 1x1 + flatten; in float32 so bf16 runs keep precision."""
  return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


def channel_shuffle(x: jax.Array, groups: int) -> jax.Array:
  """ShuffleNet shuffle on NHWC, same channel permutation as torch's view/permute on NCHW."""
  *lead, c = x.shape
  return x.reshape(*lead, groups, c // groups).swapaxes(-1, -2).reshape(*lead, c)
