"""Functional capture of every BatchNorm input (what DeepInversion's forward hooks read).

``kdjax.models.layers.BatchNorm`` sows its input into the ``'intermediates'``
collection; a forward that makes that collection mutable returns them next to the
outputs. No hooks, no globals: the captured arrays are ordinary outputs of ``apply``,
so they differentiate, jit and shard like anything else.
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

Variables = Mapping[str, Any]


class BNLayer(NamedTuple):
  """One BatchNorm application: its input (NHWC, or (B, C) for a 1-d BN) and the
  running statistics it normalises with in eval mode."""
  input: jax.Array
  running_mean: jax.Array
  running_var: jax.Array


def collect_bn_layers(intermediates: Mapping[str, Any],
                      batch_stats: Mapping[str, Any]) -> list[BNLayer]:
  """Pairs every sown ``bn_input`` with the running stats at the same module path.

  Order is the order the forward applied the layers (Flax fills the collection as the
  modules run; ``flatten_dict`` keeps that order), which is fixed for a given model, so
  lists built by different calls line up (the momentum state of ``bn_stats_loss``
  relies on that). A BatchNorm applied k times contributes k entries.
  """
  layers = []
  for path, sown in traverse_util.flatten_dict(intermediates).items():
    if path[-1] != 'bn_input':
      continue
    stats = batch_stats
    for name in path[:-1]:
      stats = stats[name]
    for x in sown:
      layers.append(BNLayer(x, stats['mean'], stats['var']))
  return layers


def forward_with_bn(model: nn.Module, variables: Variables, x: jax.Array,
                    train: bool = False, **kwargs: Any):
  """``model.apply`` that also returns the inputs of all its BatchNorm layers.

  Returns ``(logits, feats, bn_layers)`` for ``train=False`` and ``(logits, feats,
  bn_layers, new_batch_stats)`` for ``train=True`` (BatchNorm then normalises with batch
  statistics and updates its running ones). ``bn_layers[i].running_*`` are the
  statistics in ``variables`` (before any update): the targets of the BN-statistics
  loss. A model returning one array (the generator) gives ``feats=None``. ``kwargs``
  go to ``apply`` (e.g. ``preact``).
  """
  mutable = ['intermediates', 'batch_stats'] if train else ['intermediates']
  out, state = model.apply(variables, x, train=train, mutable=mutable, **kwargs)
  layers = collect_bn_layers(state.get('intermediates', {}), variables.get('batch_stats', {}))
  logits, feats = out if isinstance(out, tuple) else (out, None)
  if train:
    return logits, feats, layers, state['batch_stats']
  return logits, feats, layers


def count_bn_layers(model: nn.Module, variables: Variables,
                    input_shape: Sequence[int] = (1, 32, 32, 3)) -> int:
  """Number of BatchNorm applications in an eval forward, found by abstract evaluation
  (no compile, no arrays; ``variables`` may be ``jax.ShapeDtypeStruct`` leaves)."""
  x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
  _, _, layers = jax.eval_shape(lambda v, x: forward_with_bn(model, v, x), variables, x)
  return len(layers)


def has_batchnorm(model: nn.Module, variables: Variables,
                  input_shape: Sequence[int] = (1, 32, 32, 3)) -> bool:
  """Whether a BN-statistics method can use this model (a teacher without BatchNorm
  would make the loss identically zero)."""
  return count_bn_layers(model, variables, input_shape) > 0
