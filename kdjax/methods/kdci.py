"""KDCI as a method transformer: ``kdci(base) -> Method`` (methods.md §6, design.md).

The wrapped method keeps the base method untouched and nests beside it:

- params ``{'base': base params, 'kdci': DeconfoundedHead params}``, batch_stats
  ``{'base': ...}``, state ``{'base': base state, 'kdci': dictionary}``;
- the dictionary (``state['kdci']``): ``prototypes`` (N, d_z), ``prior`` (N,), ``built``
  (float 0/1) and ``key`` (raw uint32 PRNG key of the rebuilds and of the eval-time
  random attention); for data-based runs (``InitContext.num_train > 0`` and
  ``dict_every > 0``) also ``memory`` (num_train, d_f), the teacher's dictionary
  feature of every training example, written at ``batch.index`` each step as CRD's
  memories, and ``filled`` (num_train,) marking the rows written so far;
- ``end_epoch`` rebuilds the dictionary from the memory every ``dict_every`` epochs
  (PCA to ``pca_dim``, K-Means++ into N prototypes, prior = cluster proportions), with
  key ``fold_in(key, epoch)``; the data-free loop calls ``rebuild_dictionary`` on its
  pool instead (it passes ``num_train=0``, so no memory is kept).

Before the first build (ours) the prior counts as 0, so ``F = 0`` and the adjusted head
is ``z_do = Linear(h_s W_h)``: an ordinary linear classifier trained by the same loss, so
its number is meaningful from the first evaluation (no fallback to the plain logits).

The loss is the base method's loss with the student logits replaced by ``z_do``, plus
``plain_weight`` times the base loss on the plain logits (ours, default 1). Both calls
see the same params, RNG key and batch, so their state and BatchNorm updates agree; the
adjusted call's are kept. Base terms that do not depend on the logits (CRD's NCE, CID's
sample and class losses) therefore count ``1 + plain_weight`` times.

``eval_heads``: ``'kdci'`` (z_do with the current dictionary, the headline) then the
base method's heads. ``d_z = min(pca_dim, d_f)`` with PCA, ``d_f`` without; ``d_f`` is
the teacher's pooled penultimate width, or the class count for ``feature='logits'``
(the teacher's softened probabilities ``softmax(z_t / T)``, T = method.temperature).

Ablations (each changes only its own part): ``random_attention`` replaces the learned
attention scores by standard-normal ones drawn per example (per step in training; from
the dictionary key, hence fixed per batch row, in evaluation); ``random_prototypes``
replaces the K-Means centroids by Gaussian draws with the pool's per-dimension mean and
standard deviation (prior still the K-Means proportions); ``uniform_prior`` sets
``P(z_i) = 1/N``; ``num_prototypes`` and ``pca_dim`` (0 = off) and ``feature`` choose the
dictionary.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections

from kdjax.cluster import kmeans, pca_fit, pca_transform
from kdjax.losses.kdci import entropy
from kdjax.methods.base import (Batch, InitContext, LossOutput, Method, MethodVars, ModelOutput,
                                get_method)
from kdjax.models.heads import ATTENTIONS, DeconfoundedHead
from kdjax.types import PyTree

SUFFIX = '+kdci'
FEATURES = ('penultimate', 'logits')
# fold_in constants separating KDCI's random streams from the base method's
_HEAD_SALT, _DICT_SALT = 0x6B646369, 0x64696374


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      enabled=False,           # wrap config.method.name with KDCI
      num_prototypes=0,        # N; 0 = the number of classes (ours)
      pca_dim=64,              # PCA width of the dictionary features; 0 = no PCA (ours)
      kmeans_iters=50,         # at most this many Lloyd iterations per build
      attention='additive',    # 'additive' (w^T tanh(W_q h + W_k z)) | 'dot' (scaled)
      hidden=256,              # attention width
      plain_weight=1.0,        # weight of the base loss on the plain logits (ours)
      feature='penultimate',   # teacher feature clustered: 'penultimate' | 'logits' (softened)
      dict_every=1,            # data-based: rebuild every this many epochs (0 = never)
      random_attention=False,  # ablations
      random_prototypes=False,
      uniform_prior=False,
  ))


def validate(config: ml_collections.ConfigDict) -> None:
  """One-line errors for ``config.method.kdci``; ``ValueError`` (config.py re-raises as
  ConfigError)."""
  k = config.method.kdci
  for key, ok, accepted in (
      ('num_prototypes', k.num_prototypes >= 0, '>= 0 (0 = the number of classes)'),
      ('pca_dim', k.pca_dim >= 0, '>= 0 (0 = no PCA)'),
      ('kmeans_iters', k.kmeans_iters >= 0, '>= 0'),
      ('hidden', k.hidden > 0, '> 0'),
      ('plain_weight', k.plain_weight >= 0, '>= 0'),
      ('dict_every', k.dict_every >= 0, '>= 0 (0 = no rebuild from the training set)')):
    if not ok:
      raise ValueError(f"config key 'method.kdci.{key}' must be {accepted}, got {k[key]!r}")
  for key, accepted in (('attention', ATTENTIONS), ('feature', FEATURES)):
    if k[key] not in accepted:
      raise ValueError(f"config key 'method.kdci.{key}' is {k[key]!r}; accepted: "
                       f"{', '.join(accepted)}")
  distills = config.mode in ('distill', 'pipeline')
  if k.enabled and distills and not get_method(config.method.name).needs_teacher:
    raise ValueError(f"config key 'method.kdci.enabled': KDCI clusters the teacher's features "
                     f"but method '{config.method.name}' has no teacher; use e.g. kd")


def dictionary_features(teacher: ModelOutput, config: ml_collections.ConfigDict) -> jax.Array:
  """What the dictionary clusters, (B, d_f) float32, from a teacher forward;
  ``config`` is ``config.method``. The data-free loop feeds this of its pool to
  ``rebuild_dictionary``."""
  if config.kdci.feature == 'logits':
    return jax.nn.softmax(teacher.logits.astype(jnp.float32) / config.temperature, axis=-1)
  f = teacher.feats[-1]
  return f.reshape(f.shape[0], -1).astype(jnp.float32)


def _raw_key(key: jax.Array) -> jax.Array:
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    return jax.random.key_data(key)
  return key


def _build(kstate: PyTree, features: jax.Array, mask: jax.Array, key: jax.Array,
           kcfg: ml_collections.ConfigDict) -> PyTree:
  n_proto, d_z = kstate['prototypes'].shape
  x = features.reshape(features.shape[0], -1).astype(jnp.float32)
  if kcfg.pca_dim:
    x = pca_transform(pca_fit(x, mask, d_z), x)
  elif x.shape[1] != d_z:
    raise ValueError(f'dictionary features are {x.shape[1]}-wide but the prototypes are '
                     f'{d_z}-wide (method.kdci.pca_dim = 0)')
  k_means, k_random = jax.random.split(_raw_key(key))
  centroids, counts, _ = kmeans(k_means, x, mask, n_proto, kcfg.kmeans_iters)
  total = jnp.sum(counts)
  prior = counts / jnp.maximum(total, 1.0)
  if kcfg.random_prototypes:
    w = (jnp.asarray(mask) > 0).astype(jnp.float32)[:, None]
    mean = jnp.sum(x * w, 0) / jnp.maximum(total, 1.0)
    std = jnp.sqrt(jnp.sum(jnp.square(x - mean) * w, 0) / jnp.maximum(total, 1.0))
    centroids = mean + std * jax.random.normal(k_random, centroids.shape)
  if kcfg.uniform_prior:
    prior = jnp.full((n_proto,), 1.0 / n_proto)
  ok = total > 0   # an empty pool keeps the dictionary it had
  return {**kstate,
          'prototypes': jnp.where(ok, centroids, kstate['prototypes']),
          'prior': jnp.where(ok, prior, kstate['prior']),
          'built': jnp.where(ok, 1.0, kstate['built'])}


def rebuild_dictionary(method_state: PyTree, features: jax.Array, mask: jax.Array,
                       key: jax.Array, kdci_config: ml_collections.ConfigDict) -> PyTree:
  """The KDCI method state with its dictionary rebuilt from ``features`` (n, d_f) — the
  teacher's ``dictionary_features`` of the current pool — over the rows where ``mask``
  (n,) is set. Pure and jittable (``kdci_config`` = ``config.method.kdci``, static);
  deterministic given ``key``. A pool with no valid row leaves the dictionary as it was.
  """
  return {**method_state,
          'kdci': _build(method_state['kdci'], features, mask, key, kdci_config)}


def _adjusted(params: PyTree, kstate: PyTree, student: ModelOutput,
              config: ml_collections.ConfigDict, noise_key: jax.Array
              ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(z_do, lambda, prior used) from the student's pooled feature."""
  kcfg = config.kdci
  h = student.feats[-1].reshape(student.feats[-1].shape[0], -1)
  prior = kstate['prior'] * kstate['built']   # F = 0 until the first build
  n_proto = kstate['prototypes'].shape[0]
  noise = (jax.random.normal(noise_key, (h.shape[0], n_proto)) if kcfg.random_attention
           else None)
  head = DeconfoundedHead(student.logits.shape[-1], kcfg.hidden, kcfg.attention)
  z_do, lam = head.apply({'params': params}, h, kstate['prototypes'], prior, noise)
  return z_do, lam, prior


def _split(vars: MethodVars) -> MethodVars:
  return MethodVars(vars.params['base'], vars.batch_stats['base'], vars.state['base'])


def _init(base: Method, ctx: InitContext) -> MethodVars:
  kcfg = ctx.config.kdci
  base_vars = base.init(ctx)   # same context and key as without KDCI: the base is unchanged
  key = jax.random.fold_in(_raw_key(ctx.rng), _DICT_SALT)
  d_f = dictionary_features(ctx.teacher, ctx.config).shape[-1]
  d_z = min(kcfg.pca_dim, d_f) if kcfg.pca_dim else d_f
  n_proto = kcfg.num_prototypes or ctx.num_classes
  kstate = {'prototypes': jnp.zeros((n_proto, d_z), jnp.float32),
            'prior': jnp.zeros((n_proto,), jnp.float32),
            'built': jnp.zeros((), jnp.float32),
            'key': jax.random.fold_in(key, 1)}
  if ctx.num_train > 0 and kcfg.dict_every > 0:
    kstate['memory'] = jnp.zeros((ctx.num_train, d_f), jnp.float32)
    kstate['filled'] = jnp.zeros((ctx.num_train,), jnp.float32)
  head = DeconfoundedHead(ctx.num_classes, kcfg.hidden, kcfg.attention)
  h = ctx.student.feats[-1].reshape(ctx.student.feats[-1].shape[0], -1)
  params = head.init(jax.random.fold_in(key, 0), h, kstate['prototypes'],
                     kstate['prior'])['params']
  return MethodVars({'base': base_vars.params, 'kdci': params},
                    {'base': base_vars.batch_stats},
                    {'base': base_vars.state, 'kdci': kstate})


def _loss(base: Method, vars: MethodVars, student: ModelOutput, teacher: ModelOutput,
          batch: Batch, rng: jax.Array, epoch: jax.Array,
          config: ml_collections.ConfigDict) -> LossOutput:
  kcfg = config.kdci
  kstate = vars.state['kdci']
  z_do, lam, prior = _adjusted(vars.params['kdci'], kstate, student, config,
                               jax.random.fold_in(rng, _HEAD_SALT))
  base_vars = _split(vars)
  adjusted = base.loss(base_vars, student._replace(logits=z_do), teacher, batch, rng, epoch,
                       config)
  total, metrics = adjusted.loss, dict(adjusted.metrics)
  if kcfg.plain_weight:
    plain = base.loss(base_vars, student, teacher, batch, rng, epoch, config)
    total = total + kcfg.plain_weight * plain.loss
    metrics.update({f'plain/{k}': v for k, v in plain.metrics.items()})
  kstate = dict(kstate)
  if 'memory' in kstate:
    kstate['memory'] = kstate['memory'].at[batch.index].set(dictionary_features(teacher, config))
    kstate['filled'] = kstate['filled'].at[batch.index].set(1.0)
  metrics.update({
      'kdci/accuracy': jnp.mean(jnp.argmax(z_do, -1) == batch.labels),
      'kdci/prior_entropy': entropy(prior),
      'kdci/prior_max': jnp.max(prior),
      'kdci/attention_entropy': jnp.mean(entropy(lam)),
      'kdci/built': kstate['built'],
  })
  return LossOutput(total, metrics, {'base': adjusted.batch_stats},
                    {'base': adjusted.state, 'kdci': kstate})


def _end_epoch(base: Method, state: PyTree, epoch: jax.Array,
               config: ml_collections.ConfigDict) -> PyTree:
  kstate = state['kdci']
  if 'memory' in kstate:
    kcfg = config.kdci
    kstate = jax.lax.cond(
        (epoch + 1) % kcfg.dict_every == 0,
        lambda s: _build(s, s['memory'], s['filled'], jax.random.fold_in(s['key'], epoch), kcfg),
        lambda s: s, kstate)
  return {'base': base.end_epoch(state['base'], epoch, config), 'kdci': kstate}


def _eval_heads(base: Method, params: PyTree, batch_stats: PyTree, state: PyTree,
                student: ModelOutput, config: ml_collections.ConfigDict) -> dict[str, jax.Array]:
  z_do, _, _ = _adjusted(params['kdci'], state['kdci'], student, config,
                         jax.random.fold_in(state['kdci']['key'], _HEAD_SALT))
  return {'kdci': z_do, **base.eval_heads(params['base'], batch_stats['base'], state['base'],
                                          student, config)}


def _decay_mask(base: Method, params: PyTree) -> PyTree:
  # the head decays like any classifier (ours)
  return {'base': base.decay_mask(params['base']),
          'kdci': jax.tree.map(lambda _: True, params['kdci'])}


@functools.lru_cache(maxsize=None)
def kdci(base: Method) -> Method:
  """``base`` with KDCI's de-confounded head and dictionary (see the module docstring).
  Cached, so one base gives one wrapped method (and one set of jit traces)."""
  if base.name.endswith(SUFFIX):
    raise ValueError(f'method {base.name!r} is already wrapped by KDCI')
  p = lambda f: functools.partial(f, base)
  return Method(name=base.name + SUFFIX, loss=p(_loss), needs_teacher=True, init=p(_init),
                end_epoch=p(_end_epoch), eval_heads=p(_eval_heads), decay_mask=p(_decay_mask),
                default_config=base.default_config)


def resolve(name: str, method_config: ml_collections.ConfigDict) -> Method:
  """The method a run (or an export's metadata) names: the registered ``name``, wrapped
  by KDCI when ``method_config.kdci.enabled`` or when ``name`` is an export's wrapped
  name (``'kd+kdci'``)."""
  wrapped = name.endswith(SUFFIX)
  base = get_method(name[:-len(SUFFIX)] if wrapped else name)
  sub = method_config.get('kdci') if hasattr(method_config, 'get') else None
  return kdci(base) if wrapped or (sub is not None and sub.get('enabled', False)) else base
