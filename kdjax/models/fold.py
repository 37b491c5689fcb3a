"""BatchNorm folded into the preceding convolution of a frozen (eval-mode) model.

The teacher of a distillation run only ever runs in eval mode, where BatchNorm is the
per-channel affine map ``y = x * s + (bias - mean * s)``, ``s = scale / sqrt(var + eps)``.
When ``x`` is a convolution's output, ``s`` can go into the convolution's kernel once per
run. ``fold_batchnorm`` returns variables of the SAME structure (so every step keeps
taking ``teacher_vars`` and every model keeps its code): the kernel scaled by ``s`` and
the BatchNorm turned into an identity plus bias (mean 0, scale and var chosen so that
``scale / sqrt(var + eps) == 1``). The outputs agree with the unfolded model to float32
rounding. Which convolution feeds which BatchNorm is read from one traced forward (a
jaxpr, no FLOPs): a BatchNorm is folded when its input is, as an array, the output of a
convolution that nothing else reads (e.g. the WRN stem output is also a feature and the
next block's shortcut, so it stays as it is).
"""
from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from kdjax.models.layers import BatchNorm
from kdjax.types import PyTree

_TAG = 'kdjax_fold:'


def conv_bn_pairs(model: nn.Module, variables: PyTree, sample: jax.Array
                  ) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
  """``[(conv_path, bn_path)]``: each BatchNorm whose input is a convolution's output that
  nothing else uses (a conv output that is also a feature or a shortcut is not folded)."""
  candidates: list[tuple[tuple[str, ...], tuple[str, ...]]] = []
  outputs: dict[int, tuple[str, ...]] = {}  # id(conv output tracer) -> conv path

  def record(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name != '__call__':
      return next_fun(*args, **kwargs)
    if isinstance(module, BatchNorm) and args and id(args[0]) in outputs:
      candidates.append((outputs[id(args[0])], tuple(module.path)))
    out = next_fun(*args, **kwargs)
    if isinstance(module, nn.Conv):
      # the name marks the output in the jaxpr, so its consumers can be counted below
      out = checkpoint_name(out, _TAG + '/'.join(module.path))
      outputs[id(out)] = tuple(module.path)
    return out

  def trace(v, x, preact):
    with nn.intercept_methods(record):
      return model.apply(v, x, train=False, **preact)

  # the feature lists differ with ``preact``; a pair must be safe to fold for both
  found = None
  for preact in ({'preact': False}, {'preact': True}):
    candidates.clear()
    outputs.clear()
    try:
      jaxpr = jax.make_jaxpr(lambda v, x: trace(v, x, preact))(variables, sample).jaxpr
    except TypeError:  # a model without the preact argument
      continue
    pairs = set(_single_use(jaxpr, candidates))
    found = pairs if found is None else found & pairs
  return sorted(found or set())


def _single_use(jaxpr, candidates: list) -> list:
  """The candidates whose conv output is read by exactly one equation of ``jaxpr``."""
  tagged = {e.params['name'][len(_TAG):]: e.outvars[0] for e in jaxpr.eqns
            if e.primitive.name == 'name' and str(e.params.get('name', '')).startswith(_TAG)}
  uses: dict[Any, int] = {}
  for e in jaxpr.eqns:
    for v in e.invars:
      if not isinstance(v, jax.extend.core.Literal):
        uses[v] = uses.get(v, 0) + 1
  for v in jaxpr.outvars:
    if not isinstance(v, jax.extend.core.Literal):
      uses[v] = uses.get(v, 0) + 1
  # eval-mode BatchNorm reads its input once ((x - mean) * ...); a second use is not ours
  return [(c, b) for c, b in candidates if uses.get(tagged.get('/'.join(c)), 0) == 1]


def _get(tree: dict, path: tuple[str, ...]) -> dict:
  for key in path:
    tree = tree[key]
  return tree


def fold_batchnorm(model: nn.Module, variables: PyTree, sample: jax.Array,
                   epsilon: float | None = None) -> PyTree:
  """``variables`` with every conv -> BatchNorm pair folded (see the module docstring).

  ``sample`` is any input of the model's input shape (only its shape is used). The
  BatchNorm epsilon is read from the module; pass ``epsilon`` only to override it.
  """
  pairs = conv_bn_pairs(model, variables, sample)
  eps_of = {}

  def record_eps(next_fun, args, kwargs, context):
    if isinstance(context.module, BatchNorm):
      eps_of[tuple(context.module.path)] = context.module.epsilon
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record_eps):
    jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, sample)
  out = flax.core.unfreeze(jax.tree.map(np.asarray, variables))
  params, stats = out['params'], out['batch_stats']
  for conv_path, bn_path in pairs:
    eps = eps_of[bn_path] if epsilon is None else epsilon
    conv_p, bn_p, bn_s = _get(params, conv_path), _get(params, bn_path), _get(stats, bn_path)
    mean, var = bn_s['mean'].astype(np.float64), bn_s['var'].astype(np.float64)
    s = bn_p['scale'].astype(np.float64) / np.sqrt(var + eps)
    kernel = conv_p['kernel']
    conv_p['kernel'] = (kernel.astype(np.float64) * s).astype(kernel.dtype)
    shift = bn_p['bias'].astype(np.float64) - mean * s
    if 'bias' in conv_p:  # conv bias b becomes s * b, moved into the BatchNorm's bias
      shift = shift + conv_p['bias'].astype(np.float64) * s
      conv_p['bias'] = np.zeros_like(conv_p['bias'])
    bn_p['bias'] = shift.astype(bn_p['bias'].dtype)
    # identity normalisation: var + eps == 1 exactly in float32 up to one rounding
    bn_s['mean'] = np.zeros_like(bn_s['mean'])
    bn_s['var'] = np.full_like(bn_s['var'], 1.0 - eps)
    bn_p['scale'] = np.full_like(bn_p['scale'], 1.0)
  return jax.tree.map(jnp.asarray, out)
