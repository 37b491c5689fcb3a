"""FastDFKD (Fang et al., AAAI 2022) as in Fast-Datafree's ``FastMetaSynthesizer``.

A meta generator is kept across rounds. Each round clones it and optimises the clone
and fresh latents for ``g_steps`` (Adam, betas 0.5/0.999, ``lr_g`` / ``lr_z``) against
``bn * L_BN + oh * CE(z_t, y) + adv * masked(-KL(z_s, z_t))`` on a random crop and flip
of the generated images (the BN term blends the batch statistics with their momentum
across rounds, ``bn_mmt``), then moves the meta generator by first-order MAML (the sum
of the clone's gradients over the inner steps) or Reptile (67 x (meta - clone)), with
Adam at ``lr_g * g_steps``. The adversarial term starts after ``warmup`` epochs; the
first layers are re-initialised once, 120 epochs after the warmup (``reset_l0``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

from kdjax.data.augment import random_crop_flip
from kdjax.datafree import base
from kdjax.losses import datafree as dfl

REPTILE_SCALE = 67.0   # the reference's fixed Reptile step factor


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.g_steps = 10          # Fast-10 (fast_cifar.sh also runs 2 and 5)
  c.lr_g = 2e-3
  c.lr_z = 1e-2
  c.bn = 10.0
  c.oh = 0.5
  c.adv = 1.33            # resnet34 teacher; vgg11 1.0, wrn 1.1 (the configs set them)
  c.bn_mmt = 0.9
  c.meta = 'fomaml'       # fomaml | reptile
  c.reset_l0 = True
  c.reset_after = 120     # epochs after the warmup at which reset_l0 happens
  return c


def init(key, teacher_vars, ctx: base.SynthContext):
  gen = base.init_generator(key, ctx)
  cfg = ctx.method_config
  meta_opt = base.adam(cfg.lr_g * cfg.g_steps, 0.5, 0.999)
  _, _, layers = base.teacher_forward(ctx, teacher_vars, jnp.zeros((2,) + ctx.image_shape))
  return {'generator': gen, 'meta_opt': meta_opt.init(gen['params']),
          'mmt': dfl.init_bn_mmt(layers)}


def _inner_opt(cfg) -> optax.GradientTransformation:
  return optax.multi_transform({'generator': base.adam(cfg.lr_g, 0.5, 0.999),
                                'z': base.adam(cfg.lr_z, 0.5, 0.999)},
                               {'generator': 'generator', 'z': 'z'})


def _reset_l0(key, params):
  """Re-draws the generator's input Linear (normal(0, 0.02), zero bias) and first
  BatchNorm (scale normal(0, 0.02), as the reference writes it, zero bias)."""
  k1, k2 = jax.random.split(key)
  l1, bn = params['l1_0'], params['conv_blocks_0']
  return {**params,
          'l1_0': {'kernel': 0.02 * jax.random.normal(k1, l1['kernel'].shape),
                   'bias': jnp.zeros_like(l1['bias'])},
          'conv_blocks_0': {'scale': 0.02 * jax.random.normal(k2, bn['scale'].shape),
                            'bias': jnp.zeros_like(bn['bias'])}}


def begin(state, key, rnd, ctx: base.SynthContext):
  cfg = ctx.method_config
  kz, ky, kr, kc = jax.random.split(key, 4)
  gen = state['generator']
  if cfg.reset_l0:
    when = (ctx.config.warmup + cfg.reset_after) * ctx.rounds_per_epoch
    reset = _reset_l0(kr, gen['params'])
    gen = {**gen, 'params': jax.tree.map(lambda r, p: jnp.where(rnd == when, r, p),
                                         reset, gen['params'])}
    state = {**state, 'generator': gen}
  z = base.shard_batch(jax.random.normal(kz, (ctx.batch_size, ctx.config.nz)), ctx)
  inner = {'generator': gen['params'], 'z': z}
  return {'meta': state, 'fast': inner, 'fast_stats': gen['batch_stats'],
          'opt': _inner_opt(cfg).init(inner), 'key': kc,
          'meta_grad': jax.tree.map(jnp.zeros_like, gen['params']),
          'targets': base.random_targets(ky, ctx.batch_size, ctx.num_classes, sort=False),
          'best_x': jnp.zeros((ctx.batch_size,) + ctx.image_shape, jnp.float32),
          'best_loss': jnp.asarray(jnp.inf, jnp.float32),
          'next_mmt': state['mmt'], 'terms': _zero_terms()}


def _zero_terms():
  return {k: jnp.zeros((), jnp.float32) for k in ('loss', 'bn', 'oh', 'adv')}


def step(carry, teacher_vars, student_vars, rnd, ctx: base.SynthContext):
  cfg = ctx.method_config
  key, aug_key = jax.random.split(carry['key'])
  adv_on = rnd >= ctx.config.warmup * ctx.rounds_per_epoch
  mmt = carry['meta']['mmt']

  def loss_fn(inner):
    x01, stats = base.generate(ctx, {'params': inner['generator'],
                                     'batch_stats': carry['fast_stats']}, inner['z'])
    x = base.normalize01(random_crop_flip(aug_key, x01, 4, True), ctx)
    t_logits, _, t_bn = base.teacher_forward(ctx, teacher_vars, x)
    s_logits = base.student_logits(ctx, student_vars, x)
    loss, terms = dfl.inversion_objective(
        t_logits, carry['targets'], s_logits, t_bn, bn=cfg.bn, oh=cfg.oh,
        adv=jnp.where(adv_on, cfg.adv, 0.0), mmt=mmt if cfg.bn_mmt else None,
        mmt_rate=cfg.bn_mmt)
    # the momentum the round leaves behind comes from its last step's statistics
    next_mmt = dfl.update_bn_mmt(mmt, t_bn, cfg.bn_mmt) if cfg.bn_mmt else mmt
    return loss, (x01, stats, next_mmt, {**terms, 'loss': loss})

  (loss, (x01, stats, next_mmt, terms)), grad = jax.value_and_grad(
      loss_fn, has_aux=True)(carry['fast'])
  best_x = base.keep_best(loss, carry['best_loss'], x01, carry['best_x'])
  updates, opt_state = _inner_opt(cfg).update(grad, carry['opt'], carry['fast'])
  return {**carry, 'fast': optax.apply_updates(carry['fast'], updates), 'opt': opt_state,
          'fast_stats': stats, 'key': key,
          'meta_grad': jax.tree.map(jnp.add, carry['meta_grad'], grad['generator']),
          'best_x': best_x, 'best_loss': jnp.minimum(loss, carry['best_loss']),
          'next_mmt': next_mmt,
          'terms': {k: jnp.asarray(terms.get(k, 0.0), jnp.float32) for k in _zero_terms()}}


def finish(state, carry, ctx: base.SynthContext):
  del state
  cfg = ctx.method_config
  meta = carry['meta']
  params = meta['generator']['params']
  if cfg.meta == 'reptile':
    grad = jax.tree.map(lambda p, f: REPTILE_SCALE * (p - f), params, carry['fast']['generator'])
  else:
    grad = carry['meta_grad']
  meta_opt = base.adam(cfg.lr_g * cfg.g_steps, 0.5, 0.999)
  updates, meta_opt_state = meta_opt.update(grad, meta['meta_opt'], params)
  mmt = jax.tree.map(jax.lax.stop_gradient, carry['next_mmt'])
  new_state = {'generator': {'params': optax.apply_updates(params, updates),
                             'batch_stats': meta['generator']['batch_stats']},
               'meta_opt': meta_opt_state, 'mmt': mmt}
  return new_state, carry['best_x'], {**carry['terms'], 'best_loss': carry['best_loss']}


def check_config(cfg) -> str | None:
  if cfg.meta not in ('fomaml', 'reptile'):
    return f"meta' is {cfg.meta!r}; accepted: fomaml, reptile"
  if not 0 <= cfg.bn_mmt < 1:
    return f"bn_mmt' must be in [0, 1), got {cfg.bn_mmt!r}"
  return None


FAST = base.register(base.Synthesizer(
    name='fast', init=init, begin=begin, step=step, finish=finish,
    default_config=default_config, check_config=check_config))
