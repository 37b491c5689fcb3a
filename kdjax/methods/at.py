"""Attention transfer (methods.md §2, §7): match the spatial attention maps of every
intermediate pair ``feats[1:-1]`` (the stem and the pooled vector are left out)."""
from __future__ import annotations

import jax
import ml_collections

from kdjax.losses.at import at_loss
from kdjax.methods.base import (Batch, LossOutput, Method, MethodVars, ModelOutput,
                                classic_objective, positive, register)


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(p=2.0))  # the power in at(f) = normalize(mean_c f^p)


def _loss(vars: MethodVars, student: ModelOutput, teacher: ModelOutput, batch: Batch,
          rng: jax.Array, epoch: jax.Array, config: ml_collections.ConfigDict) -> LossOutput:
  """``gamma * CE + alpha * KL_T + beta * sum_pairs AT`` (§1; published beta=1000)."""
  del rng, epoch
  pairs = at_loss(student.feats[1:-1], teacher.feats[1:-1], config.at.p)
  total, metrics = classic_objective(student, teacher, batch.labels, config, sum(pairs))
  metrics.update({f'at/pair{i}': v for i, v in enumerate(pairs)})
  return LossOutput(total, metrics, vars.batch_stats, vars.state)


AT = register(Method(name='at', loss=_loss, needs_teacher=True, default_config=default_config,
                     options=(('p', positive, '> 0'),)))
