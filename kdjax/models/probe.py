"""Linear probes: a frozen backbone and a new linear head (transferability, CID / ICD).

The probe is called like every registered model, ``apply(vars, x, train, preact) ->
(logits, feats)``, so the generic train step trains it unchanged; what keeps the
backbone's weights frozen is (1) ``stop_gradient`` on its features and (2) the
optimizer's ``trainable_mask`` (no update, no weight decay for the backbone).

Its BatchNorm layers (``adapt_bn``): True (the default of mode transfer, as
giakoumoglou/distillers' ``transfer_student.py``, methods.md §8) runs them in train
mode while the probe trains: batch statistics are used and the running statistics are
re-estimated on the target data, which evaluation then uses. False keeps the
backbone's own running statistics throughout (inference mode always).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.types import PyTree


BACKBONE = 'backbone'
HEAD = 'head'


class LinearProbe(nn.Module):
  """``head(stop_gradient(pooled backbone feature))``; feats are the backbone's."""
  backbone: nn.Module
  num_classes: int
  dtype: Any = jnp.float32
  adapt_bn: bool = False  # BatchNorm in train mode while training (see the module docstring)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               preact: bool = False) -> tuple[jax.Array, list[jax.Array]]:
    _, feats = self.backbone(x, train=train and self.adapt_bn, preact=preact)
    feats = jax.lax.stop_gradient(list(feats))
    pooled = feats[-1]  # every zoo model ends its feature list with the pooled vector
    logits = head(self.num_classes, self.dtype, name=HEAD)(pooled)
    return logits.astype(jnp.float32), feats


def head(num_classes: int, dtype: Any = jnp.float32, name: str | None = None) -> nn.Dense:
  """The probe's linear head: weights normal(0, 0.01), zero bias (``transfer_student.py``)."""
  return nn.Dense(num_classes, dtype=dtype, kernel_init=nn.initializers.normal(0.01),
                  bias_init=nn.initializers.zeros, name=name)


def trainable_mask(params: PyTree) -> PyTree:
  """True for the head's leaves, False for the backbone's (for ``make_optimizer``)."""
  return {k: jax.tree.map(lambda _: k != BACKBONE, v) for k, v in params.items()}


def init_variables(probe: LinearProbe, backbone_variables: PyTree, key: jax.Array,
                   sample: jax.Array) -> PyTree:
  """The probe's variables: the trained backbone's, and a freshly initialised head.

  Only the head is initialised: the backbone's random initialisers would be compiled
  (tens of seconds on a CPU) for values that are thrown away. Shapes must agree with
  the probe's leaf by leaf (the export was checked against its model already), so a
  mismatch is a programming error, hence the plain ValueError.
  """
  shapes = jax.eval_shape(lambda: probe.init(key, sample, train=False))
  for collection, tree in shapes.items():
    got = jax.tree.map(jnp.shape, backbone_variables.get(collection, {}))
    if jax.tree.map(lambda s: s.shape, tree[BACKBONE]) != got:
      raise ValueError(f'backbone {collection} do not fit the probe')
  fan_in = shapes['params'][HEAD]['kernel'].shape[0]
  head_params = head(probe.num_classes, probe.dtype).init(
      key, jnp.zeros((1, fan_in), jnp.float32))['params']
  variables = {c: {BACKBONE: jax.tree.map(jnp.asarray, backbone_variables[c])} for c in shapes}
  variables['params'][HEAD] = head_params
  return variables
