"""Markdown table of the model zoo: parameters and forward FLOPs per 32x32 image.

FLOPs come from XLA's cost analysis of the compiled eval-mode forward at batch 1
(multiply and add counted separately, so about twice the usual MAC count).
Run ``python -m kdjax.models.summary`` to regenerate the table in docs/models.md.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from kdjax.models.generator import create_generator
from kdjax.models.registry import create_model, model_names


def _flops(fn, *abstract_args) -> float:
  cost = jax.jit(fn).lower(*abstract_args).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax returned one dict per device
    cost = cost[0]
  return float(cost.get('flops', float('nan')))


def model_stats(name: str, num_classes: int = 100) -> tuple[int, float]:
  """(parameter count, forward FLOPs per image) of a registered model."""
  model = create_model(name, num_classes=num_classes)
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  params = sum(p.size for p in jax.tree.leaves(variables['params']))
  return params, _flops(lambda v, x: model.apply(v, x, train=False), variables, x)


def generator_stats(nz: int = 256) -> tuple[int, float]:
  gen = create_generator(nz=nz, ngf=64, img_size=32, nc=3)
  z = jax.ShapeDtypeStruct((1, nz), jnp.float32)
  variables = jax.eval_shape(lambda z: gen.init(jax.random.key(0), z, train=False), z)
  params = sum(p.size for p in jax.tree.leaves(variables['params']))
  return params, _flops(lambda v, z: gen.apply(v, z, train=False), variables, z)


def markdown_table(num_classes: int = 100) -> str:
  rows = ['| model | parameters | GFLOPs / image |', '|---|---:|---:|']
  for name in sorted(model_names(), key=str.lower):
    params, flops = model_stats(name, num_classes)
    rows.append(f'| `{name}` | {params:,} ({params / 1e6:.2f}M) | {flops / 1e9:.3f} |')
  params, flops = generator_stats()
  rows.append(f'| DFKD `Generator(nz=256, ngf=64)` | {params:,} ({params / 1e6:.2f}M) | '
              f'{flops / 1e9:.3f} |')
  return '\n'.join(rows)


if __name__ == '__main__':
  print(markdown_table())
