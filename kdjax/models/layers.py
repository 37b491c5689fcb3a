"""Layers that reproduce PyTorch numerics where Flax's defaults differ."""
from __future__ import annotations

import functools
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

# How convolutions are lowered, per backend. 'xla': lax.conv_general_dilated and XLA's
# own gradients. 'matmul_grad': the same forward and input gradient, the kernel gradient
# as one matmul per kernel row over shifted input windows (a custom VJP). A backend not
# listed uses 'xla'; on CPU the two were measured side by side (experiments/benchmark.py
# --variants, results/benchmark_cpu_torch*.md) and XLA's own was kept.
CONV_IMPLS = ('xla', 'matmul_grad')
CONV_IMPL_BY_BACKEND: dict[str, str] = {}
_NHWC = ('NHWC', 'HWIO', 'NHWC')
_conv_impl_override: list[str] = []  # set_conv_impl's choice, for benchmarks and tests


def set_conv_impl(name: str | None) -> None:
  """Forces ``name`` (one of ``CONV_IMPLS``) for convolutions traced from now on; ``None``
  restores the per-backend choice. Already compiled functions keep their lowering."""
  if name is not None and name not in CONV_IMPLS:
    raise ValueError(f'unknown convolution lowering {name!r}; accepted: {", ".join(CONV_IMPLS)}')
  _conv_impl_override[:] = [] if name is None else [name]


def conv_impl() -> str:
  if _conv_impl_override:
    return _conv_impl_override[0]
  return CONV_IMPL_BY_BACKEND.get(jax.default_backend(), 'xla')


def _windows(x: jax.Array, i: int, j: int, out_hw: tuple[int, int], stride: tuple[int, int]
             ) -> jax.Array:
  """``x[:, i + s*h, j + s*w, :]`` for the output positions (h, w): the inputs that kernel
  tap (i, j) multiplies."""
  (ho, wo), (sh, sw) = out_hw, stride
  return jax.lax.slice(x, (0, i, j, 0), (x.shape[0], i + (ho - 1) * sh + 1,
                                          j + (wo - 1) * sw + 1, x.shape[3]), (1, sh, sw, 1))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_matmul_grad(x: jax.Array, w: jax.Array, strides: tuple[int, int],
                      padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
  return jax.lax.conv_general_dilated(x, w, strides, padding,
                                      dimension_numbers=_NHWC)


def _conv_matmul_grad_fwd(x, w, strides, padding):
  return _conv_matmul_grad(x, w, strides, padding), (x, w)


def _conv_matmul_grad_bwd(strides, padding, res, g):
  x, w = res
  _, input_vjp = jax.vjp(lambda x: jax.lax.conv_general_dilated(
      x, w, strides, padding, dimension_numbers=_NHWC), x)
  (dx,) = input_vjp(g)  # XLA's transposed convolution
  kh, kw, cin, cout = w.shape
  xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
  rows = []
  for i in range(kh):
    # the kw taps of one kernel row side by side: one (kw*cin, B*H*W) x (B*H*W, cout) matmul
    patches = jnp.concatenate([_windows(xp, i, j, g.shape[1:3], strides) for j in range(kw)], -1)
    rows.append(jnp.einsum('bhwk,bhwo->ko', patches, g,
                           preferred_element_type=jnp.float32).reshape(kw, cin, cout))
  return dx, jnp.stack(rows).astype(w.dtype)


_conv_matmul_grad.defvjp(_conv_matmul_grad_fwd, _conv_matmul_grad_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         precision=None, **kwargs):
  """``lax.conv_general_dilated`` with the lowering of ``conv_impl()``; 'matmul_grad'
  covers the plain NHWC convolution (no dilation, no groups), the rest stays XLA's."""
  plain = (feature_group_count == 1 and not any(d != 1 for d in (lhs_dilation or ()))
           and not any(d != 1 for d in (rhs_dilation or ())) and not kwargs
           and precision is None and not isinstance(padding, str) and lhs.ndim == 4
           and jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
           == jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC))
  if conv_impl() == 'matmul_grad' and plain:
    return _conv_matmul_grad(lhs, rhs, tuple(window_strides),
                             tuple(tuple(p) for p in padding))
  return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                      rhs_dilation, dimension_numbers, feature_group_count,
                                      precision=precision, **kwargs)


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
      use_bias=use_bias, dtype=dtype, kernel_init=kernel_init, bias_init=bias_init,
      conv_general_dilated=conv_general_dilated, name=name)


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
