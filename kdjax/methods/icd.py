"""Invariant consistency distillation (methods.md §4, §7).

``ICDHeads`` (student and teacher projections, the log-scale ``theta`` and bias ``b``)
are the method's parameters; the objective is ``gamma * CE + alpha * KL_T + beta *
(L_con + alpha_inv * L_inv)`` on the pooled features (ICD: gamma=1, alpha=0, beta=1;
ICD+KD: alpha=1).

Negatives: the loss runs inside the jitted step on the whole (global) batch, which
is only sharded over devices, so ``e_s @ e_t^T`` is B x B over the GLOBAL batch and XLA
inserts the gathers: under data parallelism every device's examples are negatives for
every other's, unlike the official per-GPU negatives (§4).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from kdjax.losses.icd import icd_loss
from kdjax.methods.base import (Batch, InitContext, LossOutput, Method, MethodVars, ModelOutput,
                                classic_objective, non_negative, positive, register)
from kdjax.models.heads import ICDHeads


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      feat_dim=128,
      # official code's names: alpha -> alpha_inv, max_tau -> max_scale; its learnable
      # tau / b are the ICDHeads params log_scale / bias
      alpha_inv=0.5,     # weight of the invariance term inside L_ICD
      max_scale=10.0,    # cap on exp(theta)
  ))


def _init(ctx: InitContext) -> MethodVars:
  heads = ICDHeads(ctx.config.icd.feat_dim)
  params = heads.init(ctx.rng, ctx.student.feats[-1], ctx.teacher.feats[-1])['params']
  return MethodVars(params, {}, {})


def _loss(vars: MethodVars, student: ModelOutput, teacher: ModelOutput, batch: Batch,
          rng: jax.Array, epoch: jax.Array, config: ml_collections.ConfigDict) -> LossOutput:
  del rng, epoch
  cfg = config.icd
  e_s, e_t, log_scale, bias = ICDHeads(cfg.feat_dim).apply(
      {'params': vars.params}, student.feats[-1], teacher.feats[-1])
  l_icd, terms = icd_loss(e_s, e_t, log_scale, bias, max_scale=cfg.max_scale,
                          alpha_inv=cfg.alpha_inv)
  total, metrics = classic_objective(student, teacher, batch.labels, config, l_icd)
  metrics.update({f'icd/{k}': v for k, v in terms.items()})
  metrics['icd/scale'] = jnp.minimum(jnp.exp(log_scale), cfg.max_scale)
  return LossOutput(total, metrics, vars.batch_stats, vars.state)


_OPTIONS = (('feat_dim', positive, '>= 1'), ('alpha_inv', non_negative, '>= 0'),
            ('max_scale', positive, '> 0'))

ICD = register(Method(name='icd', loss=_loss, needs_teacher=True, init=_init,
                      default_config=default_config, options=_OPTIONS))
