"""FitNet: hints from an intermediate teacher map (methods.md §2, §7).

A ``ConvRegressor`` maps the student's ``feats[hint_layer]`` to the teacher's shape;
the hint loss is the plain MSE between the two. The regressor is a method parameter
(trained with the student) and its BatchNorm runs in train mode during distillation
(§7), so its statistics live in ``MethodVars.batch_stats`` and are updated every step.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from kdjax.losses.fitnet import hint_loss
from kdjax.methods.base import (Batch, CheckContext, InitContext, LossOutput, Method, MethodVars,
                                ModelOutput, classic_objective, feature_index, non_negative,
                                register)
from kdjax.models.heads import ConvRegressor


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      hint_layer=2,    # index into the feature list (§2: default 2)
      # > 0: the first `init_epochs` epochs use the hint term alone (beta * hint), the
      # analogue of the original's separate hint stage (§2); 0 = joint from epoch 0.
      # (ours) those epochs come out of train.epochs and weight decay still applies.
      init_epochs=0,
  ))


def _regressor(f_s: jax.Array, f_t: jax.Array) -> ConvRegressor:
  return ConvRegressor(tuple(f_s.shape), tuple(f_t.shape))


def _init(ctx: InitContext) -> MethodVars:
  layer = ctx.config.fitnet.hint_layer
  f_s, f_t = ctx.student.feats[layer], ctx.teacher.feats[layer]
  variables = _regressor(f_s, f_t).init(ctx.rng, f_s, train=False)
  return MethodVars({'regressor': variables['params']},
                    {'regressor': variables['batch_stats']}, {})


def _loss(vars: MethodVars, student: ModelOutput, teacher: ModelOutput, batch: Batch,
          rng: jax.Array, epoch: jax.Array, config: ml_collections.ConfigDict) -> LossOutput:
  """``gamma * CE + alpha * KL_T + beta * MSE(regressor(f_s), f_t)`` (§1, §2)."""
  del rng
  cfg = config.fitnet
  f_s, f_t = student.feats[cfg.hint_layer], teacher.feats[cfg.hint_layer]
  mapped, updates = _regressor(f_s, f_t).apply(
      {'params': vars.params['regressor'], 'batch_stats': vars.batch_stats['regressor']},
      f_s, train=True, mutable=['batch_stats'])
  hint = hint_loss(mapped, f_t)
  total, metrics = classic_objective(student, teacher, batch.labels, config, hint)
  if cfg.init_epochs > 0:
    total = jnp.where(epoch < cfg.init_epochs, config.beta * hint, total)
  metrics['fitnet/hint'] = hint
  return LossOutput(total, metrics, {'regressor': updates['batch_stats']}, vars.state)


def _check(config: ml_collections.ConfigDict, ctx: CheckContext) -> None:
  feature_index('method.fitnet.hint_layer', config.fitnet.hint_layer, ctx)


_OPTIONS = (('init_epochs', non_negative, '>= 0 (0 = joint from epoch 0)'),)

# Published (RepDistiller): gamma=1, alpha=0, beta=100 (configs/fitnet.py).
FITNET = register(Method(name='fitnet', loss=_loss, needs_teacher=True, init=_init,
                         default_config=default_config, options=_OPTIONS,
                         check_config=_check, needs_context=True))
