"""Similarity-preserving KD (RepDistiller ``distiller_zoo/SP.py``, fixture sp_similarity):
the batch's pairwise-similarity matrices of the last feature map (``feats[-2]``, the
map before pooling, as RepDistiller's ``train_student.py``) are matched."""
from __future__ import annotations

import jax
import ml_collections

from kdjax.losses.sp import similarity_loss
from kdjax.methods.base import (Batch, LossOutput, Method, MethodVars, ModelOutput,
                                classic_objective, register)


def _loss(vars: MethodVars, student: ModelOutput, teacher: ModelOutput, batch: Batch,
          rng: jax.Array, epoch: jax.Array, config: ml_collections.ConfigDict) -> LossOutput:
  """``gamma * CE + alpha * KL_T + beta * SP`` (methods.md §1's objective; RepDistiller
  runs SP with beta = 3000)."""
  del rng, epoch
  sp = similarity_loss(student.feats[-2], teacher.feats[-2])
  total, metrics = classic_objective(student, teacher, batch.labels, config, sp)
  metrics['sp'] = sp
  return LossOutput(total, metrics, vars.batch_stats, vars.state)


SP = register(Method(name='sp', loss=_loss, needs_teacher=True))
