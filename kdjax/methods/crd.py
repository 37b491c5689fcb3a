"""Contrastive representation distillation (methods.md §2 CRD, §7).

Two ``Embed`` heads (student and teacher side, both trained) are the method's
parameters; the two per-example memories and the fixed ``Z`` constants are
``MethodVars.state`` (one row per training example, sized by ``InitContext.num_train``)
and are threaded through the jitted step: scored first, then momentum-updated at
``batch.index`` (§7). Negatives are drawn with the step's RNG.

CRD alone is ``gamma=1, alpha=0, beta=0.8``; CRD+KD is the same method with
``alpha=1`` (a config, see configs/crd.py).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from kdjax.losses.crd import CRDMemory, Embed, crd_loss, init_crd_memory, sample_negatives
from kdjax.methods.base import (Batch, InitContext, LossOutput, Method, MethodVars, ModelOutput,
                                classic_objective, fraction, positive, register)

SAMPLINGS = ('uniform',)


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      feat_dim=128,           # embedding size
      negatives=16384,        # K negatives per positive
      nce_temperature=0.07,
      momentum=0.5,           # memory update
      # Negatives are drawn uniformly over the training set (with replacement), as
      # RepDistiller's default sampler. Drawing from the other classes only
      # (losses.crd.sample_negatives_other_class) needs the training labels at init,
      # which InitContext does not provide; only 'uniform' is accepted for now.
      sampling='uniform',
  ))


def _init(ctx: InitContext) -> MethodVars:
  cfg = ctx.config.crd
  if cfg.sampling not in SAMPLINGS:
    raise ValueError(f"config key 'method.crd.sampling' is {cfg.sampling!r}; accepted: "
                     f"{', '.join(SAMPLINGS)} (other-class sampling needs the training labels, "
                     'which the method init does not receive)')
  k_s, k_t, k_mem = jax.random.split(ctx.rng, 3)
  embed = Embed(cfg.feat_dim)
  params = {'embed_s': embed.init(k_s, ctx.student.feats[-1])['params'],
            'embed_t': embed.init(k_t, ctx.teacher.feats[-1])['params']}
  memory = init_crd_memory(k_mem, ctx.num_train, cfg.feat_dim)._asdict()  # plain dict state
  # z_s and z_t may be one array object; the train step donates its state, and a buffer
  # donated twice is an error, so every leaf gets its own copy
  return MethodVars(params, {}, {k: jnp.array(v, copy=True) for k, v in memory.items()})


def _loss(vars: MethodVars, student: ModelOutput, teacher: ModelOutput, batch: Batch,
          rng: jax.Array, epoch: jax.Array, config: ml_collections.ConfigDict) -> LossOutput:
  """``gamma * CE + alpha * KL_T + beta * (NCE_s + NCE_t)`` on the pooled features."""
  del epoch
  cfg = config.crd
  embed = Embed(cfg.feat_dim)
  v_s = embed.apply({'params': vars.params['embed_s']}, student.feats[-1])
  v_t = embed.apply({'params': vars.params['embed_t']}, teacher.feats[-1])
  memory = CRDMemory(**vars.state)
  contrast_idx = sample_negatives(rng, batch.index, memory.memory_s.shape[0], cfg.negatives)
  nce, memory = crd_loss(v_s, v_t, batch.index, contrast_idx, memory, cfg.nce_temperature,
                         cfg.momentum)
  total, metrics = classic_objective(student, teacher, batch.labels, config, nce)
  metrics['crd/nce'] = nce
  return LossOutput(total, metrics, vars.batch_stats, memory._asdict())


_OPTIONS = (
    ('feat_dim', positive, '>= 1'), ('negatives', positive, '>= 1'),
    ('nce_temperature', positive, '> 0'), ('momentum', fraction, 'in [0, 1]'),
    ('sampling', lambda v: v in SAMPLINGS, f"one of {', '.join(SAMPLINGS)}"),
)

CRD = register(Method(name='crd', loss=_loss, needs_teacher=True, init=_init,
                      default_config=default_config, options=_OPTIONS))
