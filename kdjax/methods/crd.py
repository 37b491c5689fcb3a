"""Contrastive representation distillation (methods.md §2 CRD, §7).

Two ``Embed`` heads (student and teacher side, both trained) are the method's
parameters; the two per-example memories and the fixed ``Z`` constants are
``MethodVars.state`` (one row per training example, sized by ``InitContext.num_train``)
and are threaded through the jitted step: scored first, then momentum-updated at
``batch.index`` (§7). Negatives are drawn with the step's RNG.

Negatives (``method.crd.sampling``): ``'other_class'`` (default) draws each example's
``negatives`` from the training examples of the OTHER classes without replacement, as
RepDistiller's default ``--mode exact`` CIFAR-100 loader does; it needs the training
labels (``InitContext.train_labels``), which the method keeps in its state. When
``negatives`` exceeds the other-class examples of some class (tiny datasets) the draw
is with replacement, as the reference does then. ``'uniform'`` draws uniformly over the
whole training set with replacement (the reference's non-default ``relax`` path).

CRD alone is ``gamma=1, alpha=0, beta=0.8``; CRD+KD is the same method with
``alpha=1`` (a config, see configs/crd.py).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from kdjax.losses.crd import (CRDMemory, crd_loss, init_crd_memory, negative_window,
                              sample_negatives, sample_negatives_exact,
                              sample_negatives_other_class)
from kdjax.methods.base import (Batch, InitContext, LossOutput, Method, MethodVars, ModelOutput,
                                classic_objective, fraction, positive, register)
from kdjax.models.heads import Embed

SAMPLINGS = ('other_class', 'uniform')
MEMORY_KEYS = CRDMemory._fields


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      feat_dim=128,           # embedding size
      negatives=16384,        # K negatives per positive
      nce_temperature=0.07,
      momentum=0.5,           # memory update
      # 'other_class': RepDistiller's default (exact mode), see the module docstring;
      # 'uniform': over all examples with replacement
      sampling='other_class',
  ))


def _sampler_state(ctx: InitContext) -> dict[str, jax.Array]:
  """What the other-class sampler reads: the training labels and, without replacement,
  the window offsets (their length is the static window); with replacement (more
  negatives than some class's other-class examples) the class-sorted index."""
  cfg = ctx.config.crd
  if ctx.train_labels is None:
    raise ValueError("config key 'method.crd.sampling' is 'other_class', which needs the "
                     "training labels; use sampling='uniform' without them")
  labels = np.asarray(ctx.train_labels).astype(np.int32).reshape(-1)
  if labels.shape[0] != ctx.num_train:
    raise ValueError(f'{labels.shape[0]} training labels for {ctx.num_train} examples')
  counts = np.bincount(labels, minlength=ctx.num_classes)
  if cfg.negatives + counts.max() <= ctx.num_train:
    return {'labels': jnp.asarray(labels), 'window': negative_window(cfg.negatives,
                                                                     int(counts.max()))}
  order = np.argsort(labels, kind='stable').astype(np.int32)
  start = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int32)
  return {'order': jnp.asarray(order), 'class_start': jnp.asarray(start),
          'class_count': jnp.asarray(counts.astype(np.int32))}


def _negatives(state: dict[str, jax.Array], rng: jax.Array, batch: Batch,
               cfg: ml_collections.ConfigDict) -> jax.Array:
  if 'window' in state:
    return sample_negatives_exact(rng, batch.index, batch.labels, state['labels'],
                                  state['window'], cfg.negatives)
  if 'order' in state:
    return sample_negatives_other_class(rng, batch.index, batch.labels, state['order'],
                                        state['class_start'], state['class_count'],
                                        cfg.negatives)
  return sample_negatives(rng, batch.index, state['memory_s'].shape[0], cfg.negatives)


def _init(ctx: InitContext) -> MethodVars:
  cfg = ctx.config.crd
  if cfg.sampling not in SAMPLINGS:
    raise ValueError(f"config key 'method.crd.sampling' is {cfg.sampling!r}; accepted: "
                     f"{', '.join(SAMPLINGS)}")
  k_s, k_t, k_mem = jax.random.split(ctx.rng, 3)
  embed = Embed(cfg.feat_dim)
  params = {'embed_s': embed.init(k_s, ctx.student.feats[-1])['params'],
            'embed_t': embed.init(k_t, ctx.teacher.feats[-1])['params']}
  state = init_crd_memory(k_mem, ctx.num_train, cfg.feat_dim)._asdict()  # plain dict state
  if cfg.sampling == 'other_class':
    state.update(_sampler_state(ctx))
  # z_s and z_t may be one array object; the train step donates its state, and a buffer
  # donated twice is an error, so every leaf gets its own copy
  return MethodVars(params, {}, {k: jnp.array(v, copy=True) for k, v in state.items()})


def _loss(vars: MethodVars, student: ModelOutput, teacher: ModelOutput, batch: Batch,
          rng: jax.Array, epoch: jax.Array, config: ml_collections.ConfigDict) -> LossOutput:
  """``gamma * CE + alpha * KL_T + beta * (NCE_s + NCE_t)`` on the pooled features."""
  del epoch
  cfg = config.crd
  embed = Embed(cfg.feat_dim)
  v_s = embed.apply({'params': vars.params['embed_s']}, student.feats[-1])
  v_t = embed.apply({'params': vars.params['embed_t']}, teacher.feats[-1])
  memory = CRDMemory(**{k: vars.state[k] for k in MEMORY_KEYS})
  contrast_idx = _negatives(vars.state, rng, batch, cfg)
  nce, memory = crd_loss(v_s, v_t, batch.index, contrast_idx, memory, cfg.nce_temperature,
                         cfg.momentum)
  total, metrics = classic_objective(student, teacher, batch.labels, config, nce)
  metrics['crd/nce'] = nce
  return LossOutput(total, metrics, vars.batch_stats, {**vars.state, **memory._asdict()})


_OPTIONS = (
    ('feat_dim', positive, '>= 1'), ('negatives', positive, '>= 1'),
    ('nce_temperature', positive, '> 0'), ('momentum', fraction, 'in [0, 1]'),
    ('sampling', lambda v: v in SAMPLINGS, f"one of {', '.join(SAMPLINGS)}"),
)

CRD = register(Method(name='crd', loss=_loss, needs_teacher=True, init=_init,
                      default_config=default_config, options=_OPTIONS))
