"""Training from labels alone (teachers, baselines) and Hinton's KD."""
from __future__ import annotations

from kdjax.methods.base import LossOutput, Method, classic_objective, register


def _loss(vars, student, teacher, batch, rng, epoch, config) -> LossOutput:
  del rng, epoch
  total, metrics = classic_objective(student, teacher, batch.labels, config)
  return LossOutput(total, metrics, vars.batch_stats, vars.state)


# CE only: `gamma` scales the label loss; the teacher (if any) is ignored.
CE = register(Method(name='ce', loss=_loss, needs_teacher=False))
# KD (Hinton): gamma * CE + alpha * KL_T(z_s || z_t); published gamma 0.1, alpha 0.9, T 4.
KD = register(Method(name='kd', loss=_loss, needs_teacher=True))
