"""DeepInversion (Yin et al., CVPR 2020) as in Fast-Datafree's ``DeepInvSyntheiszer``.

The pixels themselves are optimised (Adam, betas 0.5/0.99) from Gaussian noise in the
teacher's normalised input space, through a random jitter and flip, against
``bn * (L_BN(teacher) - student_bn * L_BN(student)) + oh * CE(z_t, y) - adv * JS_3(z_s, z_t)
+ tv * TV(x)``, clipped to the valid pixel range after each step; the round returns the
iterate with the lowest loss.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from kdjax.data.augment import clip_normalized, jitter_flip
from kdjax.datafree import base
from kdjax.losses import datafree as dfl
from kdjax.models.capture import forward_with_bn


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.g_steps = 1000        # pixel updates per round (Fast-Datafree deepinv_cifar.sh)
  c.lr_g = 0.1
  c.bn = 10.0
  c.oh = 1.0
  c.adv = 1.0             # weight of -JS(z_s, z_t; T=3)
  c.tv = 0.0              # datafree_kd.py passes 0 (CMI's paper uses 1e-3)
  c.student_bn = 0.001    # the reference subtracts 0.001 x the student's BN loss
  c.jitter = 4            # max shift in pixels (the reference: image size / 8)
  return c


def init(key, teacher_vars, ctx: base.SynthContext):
  del key, teacher_vars, ctx
  return {}


def begin(state, key, rnd, ctx: base.SynthContext):
  del state, rnd
  kx, ky, kc = jax.random.split(key, 3)
  x = base.shard_batch(jax.random.normal(kx, (ctx.batch_size,) + ctx.image_shape), ctx)
  cfg = ctx.method_config
  opt = base.adam(cfg.lr_g, 0.5, 0.99)
  return {'x': x, 'opt': opt.init(x), 'key': kc,
          'targets': base.random_targets(ky, ctx.batch_size, ctx.num_classes, sort=True),
          'best_x': x, 'best_loss': jnp.asarray(jnp.inf, jnp.float32),
          'terms': _zero_terms()}


def _zero_terms():
  return {k: jnp.zeros((), jnp.float32) for k in ('loss', 'bn', 'oh', 'adv', 'tv')}


def step(carry, teacher_vars, student_vars, rnd, ctx: base.SynthContext):
  del rnd
  cfg = ctx.method_config
  key, aug_key = jax.random.split(carry['key'])

  def loss_fn(x):
    # one shift and flip for the whole batch, as the reference draws them
    xa = jitter_flip(aug_key, x, cfg.jitter, per_example=False)
    t_logits, _, t_bn = base.teacher_forward(ctx, teacher_vars, xa)
    s_logits, _, s_bn = forward_with_bn(ctx.student, student_vars, xa, train=False)
    loss, terms = dfl.deepinversion_objective(
        t_logits, carry['targets'], x, s_logits, t_bn,
        student_bn_layers=s_bn if cfg.student_bn else None, bn=cfg.bn, oh=cfg.oh,
        adv=cfg.adv, tv=cfg.tv, student_bn=cfg.student_bn)
    return loss, {**terms, 'loss': loss}

  (loss, terms), grad = jax.value_and_grad(loss_fn, has_aux=True)(carry['x'])
  best_x = base.keep_best(loss, carry['best_loss'], carry['x'], carry['best_x'])
  opt = base.adam(cfg.lr_g, 0.5, 0.99)
  updates, opt_state = opt.update(grad, carry['opt'], carry['x'])
  x = clip_normalized(carry['x'] + updates, ctx.mean, ctx.std)
  return {**carry, 'x': x, 'opt': opt_state, 'key': key, 'best_x': best_x,
          'best_loss': jnp.minimum(loss, carry['best_loss']),
          'terms': {k: jnp.asarray(terms.get(k, 0.0), jnp.float32) for k in _zero_terms()}}


def finish(state, carry, ctx: base.SynthContext):
  images = jnp.clip(base.denormalize(carry['best_x'], ctx), 0.0, 1.0)
  return state, images, {**carry['terms'], 'best_loss': carry['best_loss']}


DEEPINV = base.register(base.Synthesizer(
    name='deepinv', init=init, begin=begin, step=step, finish=finish,
    default_config=default_config))
