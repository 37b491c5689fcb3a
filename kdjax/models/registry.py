"""Model registry: reference names -> Flax modules.

Every registered model is a linen module called as
``model.apply(variables, x, train=..., preact=...) -> (logits, feats)`` with ``x`` a
float NHWC batch and ``feats`` the reference's feature list (NHWC maps, then the pooled
vector last). Variables are ``{'params', 'batch_stats'}``.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

ModelFactory = Callable[..., nn.Module]
_MODELS: dict[str, ModelFactory] = {}


def register(name: str) -> Callable[[ModelFactory], ModelFactory]:
  """Registers ``factory(num_classes, dtype) -> nn.Module`` under ``name``."""
  def wrap(factory: ModelFactory) -> ModelFactory:
    if name in _MODELS:
      raise ValueError(f'model {name!r} registered twice')
    _MODELS[name] = factory
    return factory
  return wrap


def model_names() -> list[str]:
  return sorted(_MODELS)


def create_model(name: str, num_classes: int, dtype: Any = jnp.float32) -> nn.Module:
  """Builds the registered model ``name``; unknown names list the accepted ones."""
  if name not in _MODELS:
    raise ValueError(f'unknown model {name!r}; accepted: {", ".join(model_names())}')
  return _MODELS[name](num_classes=num_classes, dtype=dtype)
