"""DAFL (Chen et al., ICCV 2019) as in Fast-Datafree's ``GenerativeSynthesizer``.

One generator, kept across the run and trained alongside the student (Adam, betas
0.5/0.999): each round takes ``g_steps`` generator steps on fresh latents against
``oh * CE(z_t, argmax z_t) + balance * sum_c pbar_c log pbar_c - act * mean|f_t|
(+ bn * L_BN + adv * -KL(z_s, z_t))``, then samples the ``kd_steps`` batches the student
trains on next (the reference samples one fresh batch per student step from the same,
unchanged generator; this is the same distribution, drawn up front). The pool is
replaced every round.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from kdjax.datafree import base
from kdjax.losses import datafree as dfl


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.g_steps = 1           # generator steps per round (dafl_cifar.sh)
  c.lr_g = 1e-3
  c.oh = 1.0
  c.balance = 20.0
  c.act = 0.001
  c.bn = 0.0
  c.adv = 0.0             # the reference builds DAFL with student = teacher: always 0
  return c


def init(key, teacher_vars, ctx: base.SynthContext):
  del teacher_vars
  gen = base.init_generator(key, ctx)
  opt = base.adam(ctx.method_config.lr_g, 0.5, 0.999)
  return {'generator': gen, 'opt': opt.init(gen['params'])}


def begin(state, key, rnd, ctx):
  del rnd, ctx
  return {**state, 'key': key, 'terms': _zero_terms()}


def _zero_terms():
  return {k: jnp.zeros((), jnp.float32) for k in ('loss', 'oh', 'balance', 'act', 'bn', 'adv')}


def step(carry, teacher_vars, student_vars, rnd, ctx: base.SynthContext):
  del rnd
  cfg = ctx.method_config
  key, z_key = jax.random.split(carry['key'])
  z = base.shard_batch(jax.random.normal(z_key, (ctx.batch_size, ctx.config.nz)), ctx)
  gen = carry['generator']

  def loss_fn(params):
    x01, stats = base.generate(ctx, {'params': params, 'batch_stats': gen['batch_stats']}, z)
    x = base.normalize01(x01, ctx)
    t_logits, t_feats, t_bn = base.teacher_forward(ctx, teacher_vars, x)
    s_logits = base.student_logits(ctx, student_vars, x) if cfg.adv else t_logits
    loss, terms = dfl.dafl_objective(t_logits, t_feats[-1], s_logits, t_bn if cfg.bn else None,
                                     bn=cfg.bn,
                                     oh=cfg.oh, adv=cfg.adv, act=cfg.act,
                                     balance=cfg.balance)
    return loss, (stats, {**terms, 'loss': loss})

  (_, (stats, terms)), grad = jax.value_and_grad(loss_fn, has_aux=True)(gen['params'])
  opt = base.adam(cfg.lr_g, 0.5, 0.999)
  updates, opt_state = opt.update(grad, carry['opt'], gen['params'])
  params = jax.tree.map(jnp.add, gen['params'], updates)
  return {**carry, 'generator': {'params': params, 'batch_stats': stats}, 'opt': opt_state,
          'key': key,
          'terms': {k: jnp.asarray(terms.get(k, 0.0), jnp.float32) for k in _zero_terms()}}


def finish(state, carry, ctx: base.SynthContext):
  """Samples kd_steps batches, each through the train-mode generator on its own (its
  batch statistics are per batch, as when the reference samples step by step)."""
  del state
  key = jax.random.fold_in(carry['key'], 1)
  n = ctx.config.kd_steps or ctx.config.ep_steps
  z = jax.random.normal(key, (n, ctx.batch_size, ctx.config.nz))

  def sample(stats, zb):
    x01, stats = base.generate(ctx, {'params': carry['generator']['params'],
                                     'batch_stats': stats}, base.shard_batch(zb, ctx))
    return stats, x01

  stats, images = jax.lax.scan(sample, carry['generator']['batch_stats'], z)
  new_state = {'generator': {'params': carry['generator']['params'], 'batch_stats': stats},
               'opt': carry['opt']}
  return new_state, images.reshape((-1,) + images.shape[2:]), carry['terms']


DAFL = base.register(base.Synthesizer(
    name='dafl', init=init, begin=begin, step=step, finish=finish,
    default_config=default_config, fresh_pool=True))
