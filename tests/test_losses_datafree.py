"""Data-free losses and the BatchNorm input capture (spec §5, §7; fd_* fixtures).

Every loss fixture is matched in value and in gradient; the CMI contrastive term has no
fixture and is checked against an independent numpy implementation and finite
differences.
"""
from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import close, load_fixture, nchw_to_nhwc
from kdjax.losses import datafree as df
from kdjax.models import create_model, heads
from kdjax.models.capture import BNLayer, count_bn_layers, forward_with_bn, has_batchnorm
from kdjax.models.layers import BatchNorm


def _scalar(a) -> float:
  return float(np.asarray(a).reshape(-1)[0])


def _assert_scalar(x) -> None:
  chex.assert_shape(x, ())
  chex.assert_type(x, jnp.float32)


# --- criteria -----------------------------------------------------------------------

@pytest.mark.parametrize('tname', ['T1', 'T20'])
def test_kldiv(tname):
  d, meta = load_fixture('fd_kldiv')
  t = float(tname[1:])
  assert t in meta['settings']['Ts']
  logits, targets = d[f'{tname}/logits'], d[f'{tname}/targets']
  loss, (g_l, g_t) = jax.value_and_grad(df.kldiv, argnums=(0, 1))(logits, targets, t)
  _assert_scalar(loss)
  close(loss, d[f'{tname}/loss'])
  close(g_l, d[f'{tname}/grad_logits'])
  close(g_t, d[f'{tname}/grad_targets'])
  none = df.kldiv(logits, targets, t, reduction='none')
  chex.assert_shape(none, logits.shape)
  chex.assert_type(none, jnp.float32)
  close(none, d[f'{tname}/loss_none'])
  close(df.kldiv(logits, targets, t, reduction='sum'), d[f'{tname}/loss_none'].sum())
  with pytest.raises(ValueError, match='reduction'):
    df.kldiv(logits, targets, t, reduction='mean')


@pytest.mark.parametrize('case', ['case0', 'case1', 'case2'])
def test_jsdiv(case):
  d, _ = load_fixture('fd_jsdiv')
  t = _scalar(d[f'{case}/T'])
  loss, (g_l, g_t) = jax.value_and_grad(df.jsdiv, argnums=(0, 1))(
      d[f'{case}/logits'], d[f'{case}/targets'], t)
  _assert_scalar(loss)
  close(loss, d[f'{case}/loss'])
  close(g_l, d[f'{case}/grad_logits'])
  close(g_t, d[f'{case}/grad_targets'])


def test_image_prior_tv():
  d, _ = load_fixture('fd_tv_prior')
  x = nchw_to_nhwc(d['x'])
  loss, g = jax.value_and_grad(df.image_prior_tv)(x)
  _assert_scalar(loss)
  close(loss, d['loss'])
  close(g, nchw_to_nhwc(d['grad_x']))


# --- BN statistics ------------------------------------------------------------------

def test_deepinversion_hook_three_steps_with_momentum():
  d, meta = load_fixture('fd_deepinversion_hook')
  rate = _scalar(d['mmt_rate'])
  assert rate == pytest.approx(meta['settings']['mmt_rate'])
  rm, rv = d['bn/running_mean'], d['bn/running_var']
  # The fixture's BatchNorm, captured by forward_with_bn: its eval output is unchanged
  # by the sow and the captured input is the input.
  bn_vars = {'params': {'scale': d['bn/weight'], 'bias': d['bn/bias']},
             'batch_stats': {'mean': rm, 'var': rv}}
  bn = BatchNorm()

  @jax.jit
  def step(x, mmt):
    def loss_fn(x):
      out, _, layers = forward_with_bn(bn, bn_vars, x)
      return df.bn_stats_loss(layers, mmt, rate), (out, layers)
    (loss, (out, layers)), g = jax.value_and_grad(loss_fn, has_aux=True)(x)
    return loss, g, out, layers, df.update_bn_mmt(mmt, layers, rate)

  mmt = df.init_bn_mmt([BNLayer(None, rm, rv)])
  for i in range(3):
    s = f'step{i}/'
    x = nchw_to_nhwc(d[s + 'x'])
    if i:
      close(mmt.mean[0], d[s + 'mmt_mean_used'])
      close(mmt.var[0], d[s + 'mmt_var_used'])
    else:
      assert not bool(mmt.initialized)
    loss, g, out, layers, mmt = step(x, mmt)
    _assert_scalar(loss)
    assert len(layers) == 1
    np.testing.assert_array_equal(layers[0].input, x)
    close(out, nchw_to_nhwc(d[s + 'bn_out']))
    mean, var = df.batch_moments(x)
    close(mean, d[s + 'batch_mean'])
    close(var, d[s + 'batch_var_biased'])
    close(loss, d[s + 'r_feature'])
    close(g, nchw_to_nhwc(d[s + 'grad_x']))
    close(mmt.mean[0], d[s + 'mmt_mean_after_update'])
    close(mmt.var[0], d[s + 'mmt_var_after_update'])
    assert bool(mmt.initialized)


def test_update_bn_mmt_from_none_equals_init_and_layer_losses_sum():
  key = jax.random.key(0)
  layers = [BNLayer(jax.random.normal(key, (4, 3, 3, 5)), jnp.zeros(5), jnp.ones(5)),
            BNLayer(jax.random.normal(key, (4, 7)), jnp.ones(7), jnp.ones(7))]
  a = df.update_bn_mmt(None, layers, 0.9)
  b = df.update_bn_mmt(df.init_bn_mmt(layers), layers, 0.9)
  chex.assert_trees_all_close(a, b)
  per_layer = df.bn_layer_losses(layers)
  chex.assert_shape(per_layer, (2,))
  close(df.bn_stats_loss(layers), np.sum(per_layer))
  # the (B, C) layer is reduced over the batch only
  mean, var = df.batch_moments(layers[1].input)
  ref = np.asarray(layers[1].input, np.float64)
  close(mean, ref.mean(0))
  close(var, ref.var(0))
  with pytest.raises(ValueError, match='at least one'):
    df.bn_stats_loss([])


def test_bn_loss_gradient_is_finite_when_stats_match_exactly():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 4, 4, 3)), jnp.float32)
  mean, var = df.batch_moments(x)
  g = jax.grad(lambda x: df.bn_stats_loss([BNLayer(x, mean, var)]))(x)
  assert np.all(np.isfinite(g))


# --- objectives ---------------------------------------------------------------------

def _bn_layer(d, case):
  return BNLayer(nchw_to_nhwc(d[f'{case}/bn_input']), d[f'{case}/bn/running_mean'],
                 d[f'{case}/bn/running_var'])


@pytest.mark.parametrize('case', ['case0', 'case1'])
def test_dafl_generator_loss(case):
  d, meta = load_fixture('fd_dafl_generator_loss')
  w = {k: _scalar(d[f'{case}/w_{k}']) for k in ('adv', 'bn', 'oh', 'act', 'balance')}
  assert w == pytest.approx(meta['cases'][case]['weights'])
  layer = _bn_layer(d, case)

  def loss_fn(t_out, t_feat, s_out, bn_input):
    return df.dafl_objective(t_out, t_feat, s_out, [layer._replace(input=bn_input)], **w)

  args = (d[f'{case}/t_out'], d[f'{case}/t_feat'], d[f'{case}/s_out'], layer.input)
  (loss, terms), grads = jax.value_and_grad(loss_fn, argnums=(0, 1, 2, 3), has_aux=True)(*args)
  _assert_scalar(loss)
  for k in ('bn', 'oh', 'act', 'adv', 'balance'):
    _assert_scalar(terms[k])
    close(terms[k], d[f'{case}/loss_{k}'])
  close(loss, d[f'{case}/loss'])
  # the batch-mean prediction the balance term is built from
  pbar = np.mean(np.asarray(jax.nn.softmax(args[0])), axis=0)
  close(pbar, d[f'{case}/mean_prob'])
  for g, name in zip(grads, ('t_out', 't_feat', 's_out', 'bn_input')):
    close(g, nchw_to_nhwc(d[f'{case}/grad_{name}']))
  terms_only = df.dafl_terms(args[0], args[1])
  assert set(terms_only) == {'oh', 'balance', 'act'}
  close(terms_only['balance'], d[f'{case}/loss_balance'])


@pytest.mark.parametrize('case', ['case0', 'case1'])
def test_fast_masked_adversarial_objective(case):
  d, meta = load_fixture('fd_fast_adv_loss')
  w = {k: _scalar(d[f'{case}/w_{k}']) for k in ('adv', 'bn', 'oh')}
  assert w == pytest.approx(meta['cases'][case]['weights'])
  s_out, t_out = d[f'{case}/s_out'], d[f'{case}/t_out']
  mask = df.agreement_mask(s_out, t_out)
  np.testing.assert_array_equal(mask, d[f'{case}/mask'])
  assert int(mask.sum()) == meta['cases'][case]['n_agree']
  close(df.kldiv(s_out, t_out, 1.0, reduction='none').sum(-1), d[f'{case}/kl_per_sample'])
  layer = _bn_layer(d, case)
  targets = jnp.asarray(d[f'{case}/targets'])

  @jax.jit
  def run(t_out, s_out, bn_input):
    def loss_fn(t_out, s_out, bn_input):
      return df.inversion_objective(t_out, targets, s_out, [layer._replace(input=bn_input)], **w)
    return jax.value_and_grad(loss_fn, argnums=(0, 1, 2), has_aux=True)(t_out, s_out, bn_input)

  (loss, terms), (g_t, g_s, g_bn) = run(t_out, s_out, layer.input)
  _assert_scalar(loss)
  for k in ('bn', 'oh', 'adv'):
    close(terms[k], d[f'{case}/loss_{k}'])
  close(terms['agree'], meta['cases'][case]['n_agree'] / len(mask))
  close(loss, d[f'{case}/loss'])
  close(g_t, d[f'{case}/grad_t_out'])
  close(g_s, d[f'{case}/grad_s_out'])
  close(g_bn, nchw_to_nhwc(d[f'{case}/grad_bn_input']))
  close(df.masked_adversarial(s_out, t_out), d[f'{case}/loss_adv'])


def test_adversarial_terms_are_off_without_weight_or_student():
  rng = np.random.default_rng(1)
  t, s = (jnp.asarray(rng.normal(size=(8, 10)), jnp.float32) for _ in range(2))
  y = jnp.arange(8) % 10
  _, terms = df.inversion_objective(t, y, s, adv=0.0)
  assert float(terms['adv']) == 0.0 and float(terms['bn']) == 0.0
  _, terms = df.inversion_objective(t, y, None, adv=1.0)
  assert float(terms['adv']) == 0.0
  loss, terms = df.dafl_objective(t, t, s, adv=0.0)
  assert float(terms['adv']) == 0.0


def test_deepinversion_objective_against_numpy():
  """Composition check (components are fixture-checked above): independent float64 numpy."""
  rng = np.random.default_rng(2)
  b, c, ch = 6, 10, 4
  t = rng.normal(size=(b, c)).astype(np.float32) * 3
  s = rng.normal(size=(b, c)).astype(np.float32) * 3
  y = rng.integers(0, c, size=b).astype(np.int32)
  x = rng.uniform(size=(b, 8, 8, 3)).astype(np.float32)
  tin = rng.normal(size=(b, 4, 4, ch)).astype(np.float32)
  sin = rng.normal(size=(b, 4, 4, ch)).astype(np.float32)
  rm, rv = rng.normal(size=ch).astype(np.float32), rng.uniform(0.5, 2, size=ch).astype(np.float32)
  w = dict(bn=10.0, oh=1.0, adv=1.0, tv=0.001, l2=0.01, student_bn=0.001)
  loss, terms = df.deepinversion_objective(
      t, y, x, s, [BNLayer(tin, rm, rv)], student_bn_layers=[BNLayer(sin, rm, rv)], **w)
  _assert_scalar(loss)

  def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)

  def r(v):
    v = v.astype(np.float64).reshape(-1, ch)
    return np.linalg.norm(rv - v.var(0)) + np.linalg.norm(rm - v.mean(0))

  z = t.astype(np.float64)
  ce = np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(b), y])
  p, q = softmax(s.astype(np.float64) / 3), softmax(z / 3)
  m = np.clip((p + q) / 2, 0.01, 0.99)
  p, q = np.clip(p, 0.01, 0.99), np.clip(q, 0.01, 0.99)
  js = (0.5 * np.sum(m * np.log(m / p)) + 0.5 * np.sum(m * np.log(m / q))) / b
  xx = x.astype(np.float64)
  tv = sum(np.abs(dd).mean() for dd in (xx[:, :, :-1] - xx[:, :, 1:], xx[:, :-1] - xx[:, 1:],
                                        xx[:, 1:, :-1] - xx[:, :-1, 1:],
                                        xx[:, :-1, :-1] - xx[:, 1:, 1:]))
  ref = {'bn': r(tin) - 0.001 * r(sin), 'oh': ce, 'adv': -js, 'tv': tv,
         'l2': np.linalg.norm(xx)}
  for k, v in ref.items():
    close(terms[k], v)
  close(loss, 10 * ref['bn'] + ref['oh'] + ref['adv'] + 0.001 * tv + 0.01 * ref['l2'])


# --- capture on real models -----------------------------------------------------------

def _conv_nhwc(x, kernel, stride=1, pad=1):
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                      precision=jax.lax.Precision.HIGHEST)


def _n_batchnorms(variables) -> int:
  from flax import traverse_util
  return sum(1 for p in traverse_util.flatten_dict(variables['batch_stats']) if p[-1] == 'mean')


@pytest.mark.parametrize('name', ['resnet8', 'wrn_16_1'])
def test_capture_matches_hand_computed_inputs(name):
  model = create_model(name, 10)
  key = jax.random.key(3)
  x = jax.random.normal(key, (4, 32, 32, 3))
  variables = jax.jit(lambda k, x: model.init(k, x, train=False))(key, x)
  # random running stats so matching by path is actually tested
  from flax import traverse_util
  flat = traverse_util.flatten_dict(variables['batch_stats'])
  flat = {p: jax.random.uniform(jax.random.fold_in(key, i), v.shape, minval=0.5, maxval=1.5)
          for i, (p, v) in enumerate(flat.items())}
  variables = {'params': variables['params'], 'batch_stats': traverse_util.unflatten_dict(flat)}

  logits, feats, layers = jax.jit(lambda v, x: forward_with_bn(model, v, x))(variables, x)
  ref_logits, ref_feats = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  np.testing.assert_array_equal(logits, ref_logits)
  assert len(layers) == _n_batchnorms(variables) == count_bn_layers(model, variables)
  assert has_batchnorm(model, variables)
  for layer in layers:
    chex.assert_type(layer.input, jnp.float32)
    assert layer.input.shape[-1] == layer.running_mean.shape[0] == layer.running_var.shape[0]
  bs = variables['batch_stats']
  if name == 'resnet8':
    # the stem BN sees conv1(x); the first block's bn1 sees its conv1 of relu(stem BN)
    stem = _conv_nhwc(x, variables['params']['conv1']['kernel'])
    close(layers[0].input, stem, atol=1e-4)
    np.testing.assert_array_equal(layers[0].running_mean, bs['bn1']['mean'])
    st = bs['bn1']
    scale = variables['params']['bn1']
    h = jax.nn.relu((stem - st['mean']) / jnp.sqrt(st['var'] + 1e-5) * scale['scale'] + scale['bias'])
    close(layers[1].input, _conv_nhwc(h, variables['params']['layer1_0']['conv1']['kernel']),
          atol=1e-4)
    np.testing.assert_array_equal(layers[1].running_var, bs['layer1_0']['bn1']['var'])
  else:
    # pre-activation: block1's first BN sees the stem conv, the final BN the last stage sum
    close(layers[0].input, ref_feats[0])
    np.testing.assert_array_equal(layers[0].running_mean, bs['block1']['layer_0']['bn1']['mean'])
    close(layers[-1].input, ref_feats[3])
    np.testing.assert_array_equal(layers[-1].running_var, bs['bn1']['var'])

  # gradients reach the input through every captured layer, and match finite differences
  loss = jax.jit(lambda x: df.bn_stats_loss(forward_with_bn(model, variables, x)[2]))
  g = jax.jit(jax.grad(loss))(x)
  chex.assert_shape(g, x.shape)
  assert np.all(np.isfinite(g)) and float(jnp.abs(g).max()) > 0
  v = g / jnp.linalg.norm(g)  # steepest direction: the largest, best-resolved derivative
  eps = 1e-2
  fd = (loss(x + eps * v) - loss(x - eps * v)) / (2 * eps)
  np.testing.assert_allclose(float(jnp.vdot(g, v)), float(fd), rtol=2e-2)


def test_capture_train_mode_returns_updated_stats():
  model = create_model('resnet8', 10)
  x = jax.random.normal(jax.random.key(5), (4, 32, 32, 3))
  variables = jax.jit(lambda k, x: model.init(k, x, train=False))(jax.random.key(6), x)
  logits, feats, layers, new_stats = jax.jit(
      lambda v, x: forward_with_bn(model, v, x, train=True))(variables, x)
  (ref_logits, _), ref_state = jax.jit(
      lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))(variables, x)
  np.testing.assert_array_equal(logits, ref_logits)
  chex.assert_trees_all_equal(new_stats, ref_state['batch_stats'])
  assert len(layers) == _n_batchnorms(variables)
  # the targets are the statistics that were passed in, not the updated ones
  np.testing.assert_array_equal(layers[0].running_mean, variables['batch_stats']['bn1']['mean'])


def test_capture_generator_has_no_feats():
  from kdjax.models import create_generator
  gen = create_generator(nz=8, ngf=8)
  z = jax.random.normal(jax.random.key(0), (4, 8))
  variables = jax.jit(lambda k, z: gen.init(k, z, train=False))(jax.random.key(1), z)
  images, feats, layers, _ = jax.jit(lambda v, z: forward_with_bn(gen, v, z, train=True))(
      variables, z)
  assert feats is None and len(layers) == 3
  chex.assert_shape(images, (4, 32, 32, 3))


@pytest.mark.parametrize('name', ['resnet18', 'resnet34', 'vgg11', 'wrn_40_2', 'resnet56'])
def test_capture_counts_every_batchnorm_of_teachers(name):
  model = create_model(name, 100)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                             train=False))
  assert count_bn_layers(model, shapes) == _n_batchnorms(shapes) > 0


def test_has_batchnorm_false_without_batchnorm():
  class NoBN(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      f = jnp.mean(x, axis=(1, 2))
      return nn.Dense(3)(f), [f]

  model = NoBN()
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  assert not has_batchnorm(model, variables)


# --- CMI: head, memory bank, contrastive term --------------------------------------------

def test_memory_bank_ring_buffer():
  bank = df.bank_init(10, 3)
  chex.assert_shape(bank.data, (10, 3))
  add = jax.jit(df.bank_add)
  ref = np.zeros((10, 3), np.float32)
  ptr = 0
  for step in range(3):
    feats = np.full((4, 3), step + 1, np.float32) + np.arange(4, dtype=np.float32)[:, None] / 10
    bank = add(bank, feats)
    for row in feats:   # numpy ring buffer
      ref[ptr] = row
      ptr = (ptr + 1) % 10
    np.testing.assert_array_equal(bank.data, ref)
    assert int(bank.ptr) == ptr
    assert int(bank.size) == min(4 * (step + 1), 10)
  with pytest.raises(ValueError, match='cannot add'):
    df.bank_add(bank, np.zeros((11, 3), np.float32))


def test_memory_bank_sample_masks_missing_rows():
  data = np.arange(20, dtype=np.float32).reshape(10, 2)
  sample = jax.jit(df.bank_sample, static_argnums=2)
  partial = df.bank_add(df.bank_init(10, 2), data[:4])
  seen = set()
  for i in range(20):
    feats, valid = sample(partial, jax.random.key(i), 6)
    chex.assert_shape(feats, (6, 2))
    np.testing.assert_array_equal(valid, [True] * 4 + [False] * 2)
    rows = [int(r[0]) // 2 for r in np.asarray(feats)[:4]]
    assert len(set(rows)) == 4 and set(rows) <= {0, 1, 2, 3}   # without replacement
  full = df.bank_add(df.bank_add(df.bank_init(10, 2), data[:6]), data[6:])
  for i in range(20):
    feats, valid = sample(full, jax.random.key(i), 6)
    assert bool(np.all(valid))
    rows = [int(r[0]) // 2 for r in np.asarray(feats)]
    assert len(set(rows)) == 6
    seen.update(rows)
  assert seen == set(range(10))   # every row can be drawn
  with pytest.raises(ValueError, match='cannot sample'):
    df.bank_sample(full, jax.random.key(0), 11)


def _head_setup(n=5, d=12, m=7, seed=0):
  rng = np.random.default_rng(seed)
  local = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
  glob = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
  bank = jnp.asarray(rng.normal(size=(m, 2 * d)), jnp.float32)
  head = heads.CMIHead()
  params = head.init(jax.random.key(seed), local)['params']
  return head, params, local, glob, bank


def _numpy_cmi(params, local, glob, bank, valid, t, global_params=None):
  """Reference CMI contrastive loss in float64, with only the valid bank rows kept.
  ``global_params`` (default ``params``) project the global side, which the reference
  detaches: differentiating in ``params`` alone gives the reference's head gradient."""

  def proj(x, params):
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    h = np.maximum(x @ p['head_0']['kernel'] + p['head_0']['bias'], 0)
    z = h @ p['head_2']['kernel'] + p['head_2']['bias']
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)

  d = local.shape[1]
  bank = np.asarray(bank, np.float64)[np.asarray(valid)]
  lo = proj(np.concatenate([np.asarray(local, np.float64), bank[:, :d]]), params)
  gl = proj(np.concatenate([np.asarray(glob, np.float64), bank[:, d:]]),
            params if global_params is None else global_params)
  logits = lo @ gl.T / t
  logits -= logits.max(1, keepdims=True)
  ce = -(np.diag(logits) - np.log(np.exp(logits).sum(1)))
  n = local.shape[0]
  return ce[:n].mean() + (ce[n:].mean() if len(bank) else 0.0)


def test_cmi_head_layout():
  head, params, local, _, _ = _head_setup()
  chex.assert_shape(params['head_0']['kernel'], (12, 12))
  chex.assert_shape(params['head_2']['kernel'], (12, 256))
  z = head.apply({'params': params}, local)
  chex.assert_shape(z, (5, 256))
  np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize('n_valid', [0, 3, 7])
def test_cmi_contrastive_loss_against_numpy(n_valid):
  head, params, local, glob, bank = _head_setup()
  valid = jnp.arange(7) < n_valid
  loss = jax.jit(lambda *a: heads.cmi_contrastive_loss(*a, temperature=0.2))(
      params, local, glob, bank, valid)
  _assert_scalar(loss)
  close(loss, _numpy_cmi(params, local, glob, bank, valid, 0.2))
  if n_valid == 0:   # an empty bank is the same as no bank
    close(heads.cmi_contrastive_loss(params, local, glob), loss)


def test_cmi_contrastive_gradients():
  head, params, local, glob, bank = _head_setup(seed=1)
  valid = jnp.arange(7) < 4
  loss = lambda p, lo, gl: heads.cmi_contrastive_loss(p, lo, gl, bank, valid, temperature=0.2)
  # the global projections are detached: no gradient reaches the global view
  g_glob = jax.grad(loss, argnums=2)(params, local, glob)
  np.testing.assert_array_equal(g_glob, np.zeros_like(glob))
  # the gradient into the local view matches finite differences (float32, jax) ...
  jax.test_util.check_grads(lambda lo: loss(params, lo, glob), (local,), order=1,
                            modes=['rev'], eps=1e-3, atol=2e-2, rtol=2e-2)
  # ... and the float64 numpy reference differentiated numerically along the gradient,
  # for the local view and for the head (whose global-side use is detached)
  g_p, g_lo = jax.grad(loss, argnums=(0, 1))(params, local, glob)
  eps = 1e-5
  v = np.asarray(g_lo / jnp.linalg.norm(g_lo), np.float64)
  lo64 = np.asarray(local, np.float64)
  f = lambda lo: _numpy_cmi(params, lo, glob, bank, valid, 0.2)
  np.testing.assert_allclose(float(jnp.linalg.norm(g_lo)),
                             (f(lo64 + eps * v) - f(lo64 - eps * v)) / (2 * eps), rtol=1e-3)
  norm = float(np.sqrt(sum(np.sum(np.square(np.asarray(a, np.float64)))
                           for a in jax.tree.leaves(g_p))))
  assert norm > 0
  shift = lambda sign: jax.tree.map(
      lambda a, g: np.asarray(a, np.float64) + sign * eps * np.asarray(g, np.float64) / norm,
      params, g_p)
  f = lambda p: _numpy_cmi(p, local, glob, bank, valid, 0.2, global_params=params)
  np.testing.assert_allclose(norm, (f(shift(1)) - f(shift(-1))) / (2 * eps), rtol=1e-3)


def test_instance_means_concatenate_spatial_means():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(3, 4, 4, 5)), rng.normal(size=(3, 2, 2, 7))
  layers = [BNLayer(jnp.asarray(a, jnp.float32), None, None),
            BNLayer(jnp.asarray(b, jnp.float32), None, None)]
  out = df.instance_means(layers)
  chex.assert_shape(out, (3, 12))
  close(out, np.concatenate([a.mean((1, 2)), b.mean((1, 2))], axis=1))


def test_numpy_scalar_zero_weight_disables_adversarial_term():
  rng = np.random.default_rng(3)
  t, s = (jnp.asarray(rng.normal(size=(8, 10)), jnp.float32) for _ in range(2))
  _, terms = df.inversion_objective(t, jnp.zeros(8, jnp.int32), s, adv=np.float32(0))
  assert float(terms['adv']) == 0.0
  close(df.instance_means([t[:, None, None, :]]), t)


def test_bn_loss_and_views_agree_on_1_and_8_devices():
  """Batch sharded over the 8 simulated devices: the statistics are global (same loss,
  same gradient), and per-example augmentation keys give the same views."""
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  from kdjax.data.augment import jitter_flip, random_resized_crop
  d, _ = load_fixture('fd_deepinversion_hook')
  x = nchw_to_nhwc(d['step0/x'])
  layer = BNLayer(x, d['bn/running_mean'], d['bn/running_var'])

  def f(x):
    loss, g = jax.value_and_grad(lambda x: df.bn_stats_loss([layer._replace(input=x)]))(x)
    key = jax.random.key(0)
    return loss, g, jitter_flip(key, x, 2), random_resized_crop(key, x)

  single = jax.jit(f)(x)
  mesh = Mesh(np.array(jax.devices()[:8]), ('data',))
  sharded = jax.jit(f)(jax.device_put(x, NamedSharding(mesh, P('data'))))
  assert sharded[1].sharding.num_devices == 8
  close(sharded[0], d['step0/r_feature'])
  for a, b in zip(single, sharded):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
