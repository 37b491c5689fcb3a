"""CMI (Fang et al., IJCAI 2021) as in Fast-Datafree's ``CMISynthesizer``.

Every round re-initialises the generator (normal(0, 0.02) weights, BatchNorm scales
normal(1, 0.02)) and optimises it jointly with fresh latents (Adam ``lr_g``, betas
0.5/0.999) for ``g_steps`` against the inversion loss ``bn * L_BN + oh * CE + adv *
masked(-KL)`` on a global view (crop with padding 4, flip) plus ``cr`` times an InfoNCE
between the teacher's instance-mean BatchNorm features of a local view (random resized
crop 0.25-1, flip) and of the global view, through a projection head kept across rounds
(its own Adam) and against a memory bank of earlier rounds' features.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

from kdjax.data.augment import random_crop_flip, random_resized_crop
from kdjax.datafree import base
from kdjax.losses import datafree as dfl
from kdjax.models import heads


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.g_steps = 200         # cmi_cifar.sh
  c.lr_g = 1e-3
  c.bn = 1.0
  c.oh = 1.0
  c.adv = 0.5
  c.cr = 0.8
  c.cr_T = 0.2
  c.bank_size = 40960
  c.n_neg = 4096
  c.head_dim = 256
  return c


def _head(cfg) -> heads.CMIHead:
  return heads.CMIHead(features=cfg.head_dim)


def _feature_dim(ctx, teacher_vars) -> int:
  _, _, layers = base.teacher_forward(ctx, teacher_vars, jnp.zeros((2,) + ctx.image_shape))
  return int(dfl.instance_means(layers).shape[-1])


def init(key, teacher_vars, ctx: base.SynthContext):
  cfg = ctx.method_config
  dim = _feature_dim(ctx, teacher_vars)
  head_params = _head(cfg).init(key, jnp.zeros((1, dim)))['params']
  return {'head': head_params, 'head_opt': base.adam(cfg.lr_g, 0.9, 0.999).init(head_params),
          'bank': dfl.bank_init(cfg.bank_size, 2 * dim),
          'generator': base.init_generator(jax.random.fold_in(key, 1), ctx)}


def _reset_generator(key, params):
  """The reference's ``reset_model``: conv / linear weights normal(0, 0.02) and zero bias;
  BatchNorm scale normal(1, 0.02) and zero bias."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  keys = jax.random.split(key, len(leaves))
  out = []
  for (path, leaf), k in zip(leaves, keys):
    name = path[-1].key
    if name == 'kernel':
      out.append(0.02 * jax.random.normal(k, leaf.shape))
    elif name == 'scale':
      out.append(1.0 + 0.02 * jax.random.normal(k, leaf.shape))
    else:
      out.append(jnp.zeros_like(leaf))
  return jax.tree_util.tree_unflatten(treedef, out)


def _inner_opt(cfg) -> optax.GradientTransformation:
  return base.adam(cfg.lr_g, 0.5, 0.999)


def begin(state, key, rnd, ctx: base.SynthContext):
  del rnd
  cfg = ctx.method_config
  kg, kz, ky, kc = jax.random.split(key, 4)
  gen = {'params': _reset_generator(kg, state['generator']['params']),
         'batch_stats': state['generator']['batch_stats']}
  inner = {'generator': gen['params'],
           'z': base.shard_batch(jax.random.normal(kz, (ctx.batch_size, ctx.config.nz)), ctx)}
  dim = state['bank'].data.shape[-1]
  return {'state': state, 'inner': inner, 'stats': gen['batch_stats'],
          'opt': _inner_opt(cfg).init(inner), 'key': kc,
          'targets': base.random_targets(ky, ctx.batch_size, ctx.num_classes, sort=True),
          'best_x': jnp.zeros((ctx.batch_size,) + ctx.image_shape, jnp.float32),
          'best_feats': jnp.zeros((ctx.batch_size, dim), jnp.float32),
          'best_loss': jnp.asarray(jnp.inf, jnp.float32), 'terms': _zero_terms()}


def _zero_terms():
  return {k: jnp.zeros((), jnp.float32) for k in ('loss', 'bn', 'oh', 'adv', 'cr')}


def step(carry, teacher_vars, student_vars, rnd, ctx: base.SynthContext):
  del rnd
  cfg = ctx.method_config
  state = carry['state']
  key, k_global, k_local, k_bank = jax.random.split(carry['key'], 4)
  bank_feats, bank_valid = dfl.bank_sample(state['bank'], k_bank, cfg.n_neg)

  def loss_fn(inner, head_params):
    x01, stats = base.generate(ctx, {'params': inner['generator'],
                                     'batch_stats': carry['stats']}, inner['z'])
    global_view = base.normalize01(random_crop_flip(k_global, x01, 4, True), ctx)
    local_view = base.normalize01(
        random_crop_flip(k_local, random_resized_crop(k_local, x01, (0.25, 1.0)), 0, True), ctx)
    t_logits, _, t_bn = base.teacher_forward(ctx, teacher_vars, global_view)
    s_logits = base.student_logits(ctx, student_vars, global_view)
    loss, terms = dfl.inversion_objective(t_logits, carry['targets'], s_logits, t_bn,
                                          bn=cfg.bn, oh=cfg.oh, adv=cfg.adv)
    global_feat = dfl.instance_means(t_bn)
    _, _, local_bn = base.teacher_forward(ctx, teacher_vars, local_view)
    local_feat = dfl.instance_means(local_bn)
    cr = heads.cmi_contrastive_loss(head_params, local_feat, global_feat, bank_feats,
                                  bank_valid, head=_head(cfg), temperature=cfg.cr_T)
    loss = loss + cfg.cr * cr
    feats = jnp.concatenate([local_feat, global_feat], axis=-1)
    return loss, (x01, stats, jax.lax.stop_gradient(feats), {**terms, 'cr': cr, 'loss': loss})

  (loss, (x01, stats, feats, terms)), (g_inner, g_head) = jax.value_and_grad(
      loss_fn, argnums=(0, 1), has_aux=True)(carry['inner'], state['head'])
  best_x, best_feats = base.keep_best(loss, carry['best_loss'], (x01, feats),
                                      (carry['best_x'], carry['best_feats']))
  updates, opt_state = _inner_opt(cfg).update(g_inner, carry['opt'], carry['inner'])
  head_opt = base.adam(cfg.lr_g, 0.9, 0.999)
  h_updates, head_opt_state = head_opt.update(g_head, state['head_opt'], state['head'])
  state = {**state, 'head': optax.apply_updates(state['head'], h_updates),
           'head_opt': head_opt_state}
  return {**carry, 'state': state, 'inner': optax.apply_updates(carry['inner'], updates),
          'opt': opt_state, 'stats': stats, 'key': key, 'best_x': best_x,
          'best_feats': best_feats, 'best_loss': jnp.minimum(loss, carry['best_loss']),
          'terms': {k: jnp.asarray(terms.get(k, 0.0), jnp.float32) for k in _zero_terms()}}


def finish(state, carry, ctx: base.SynthContext):
  del state, ctx
  state = carry['state']
  state = {**state, 'bank': dfl.bank_add(state['bank'], carry['best_feats']),
           'generator': {'params': carry['inner']['generator'], 'batch_stats': carry['stats']}}
  return state, carry['best_x'], {**carry['terms'], 'best_loss': carry['best_loss']}


def check_config(cfg) -> str | None:
  if cfg.n_neg > cfg.bank_size:
    return f"n_neg' = {cfg.n_neg} is larger than bank_size = {cfg.bank_size}"
  if cfg.cr_T <= 0:
    return f"cr_T' must be > 0, got {cfg.cr_T!r}"
  return None


CMI = base.register(base.Synthesizer(
    name='cmi', init=init, begin=begin, step=step, finish=finish,
    default_config=default_config, check_config=check_config))
