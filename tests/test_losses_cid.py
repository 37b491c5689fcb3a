"""Parity of the CID losses, context dictionary and heads with the reference fixtures
(spec §3, §7), plus the static-shape class loss against a plain loop."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_fixture
from conftest import close
from kdjax.losses import cid_loss, class_gram_loss, class_gram_terms, context_accumulate, context_finalize, init_context_accumulator, normalized_mse
from kdjax.models.heads import InterventionalHead, SampleRegressor, interventional_logits



def _linear(d, name):
  return {'linear': {'kernel': d[f'{name}/linear.weight'].T, 'bias': d[f'{name}/linear.bias']}}


def test_cid_sample_loss():
  d, meta = load_fixture('cid_sample_loss')
  reg = SampleRegressor(meta['settings']['dt'])
  params = _linear(d, 'reg')
  init = jax.eval_shape(reg.init, jax.random.PRNGKey(0), d['f_s'])['params']
  chex.assert_trees_all_equal_shapes(init, params)

  def loss_fn(params, f_s):
    out = reg.apply({'params': params}, f_s)
    return normalized_mse(out, d['f_t']), out

  (loss, out), (g_p, g_x) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
      params, d['f_s'])
  close(out, d['reg_out'])
  close(loss, d['loss'])
  close(g_x, d['grad_f_s'])
  close(g_p['linear']['kernel'], d['grad_reg_weight'].T)
  close(g_p['linear']['bias'], d['grad_reg_bias'])


@pytest.mark.parametrize('case', ['case0', 'case1'])
def test_cid_class_loss(case):
  d, meta = load_fixture('cid_class_loss')
  c = meta['settings']['num_classes']
  f_s, f_t, labels = d[f'{case}/f_s'], d[f'{case}/f_t'], d[f'{case}/labels']
  loss, g = jax.jit(jax.value_and_grad(class_gram_loss), static_argnums=3)(f_s, f_t, labels, c)
  chex.assert_shape(loss, ())
  chex.assert_type(loss, jnp.float32)
  close(loss, d[f'{case}/loss_class'])
  close(g, d[f'{case}/grad_f_s'])
  per_class, qualifies = class_gram_terms(f_s, f_t, labels, c)
  close(per_class, d[f'{case}/per_class_cosine'])
  np.testing.assert_array_equal(qualifies, d[f'{case}/qualifies'].astype(bool))
  assert int(qualifies.sum()) == int(d[f'{case}/involve_class'][0])
  if case == 'case1':  # nobody qualifies: exactly 0 and zero gradient
    assert float(loss) == 0.0 and not np.any(np.asarray(g))


def _class_loss_loop(f_s, f_t, labels):
  norm = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  terms = []
  for k in np.unique(labels):
    rows = labels == k
    n = rows.sum()
    if n < 2:
      continue
    fs, ft = norm(f_s[rows]), norm(f_t[rows])
    terms.append(np.sum((ft @ ft.T - fs @ fs.T) ** 2) / n ** 2)
  return np.mean(terms) if terms else 0.0


@pytest.mark.parametrize('labels', [
    [0, 1, 2, 3, 4, 5, 6, 7],           # all singletons -> exactly 0
    [3, 3, 3, 3, 3, 3, 3, 3],           # one class
    [0, 0, 1, 2, 2, 2, 9, 5],           # mixed, with singletons
    [9, 1, 9, 1, 4, 4, 4, 4],           # unsorted
])
def test_class_gram_loss_matches_loop(labels):
  labels = np.asarray(labels, np.int32)
  rng = np.random.default_rng(len(set(labels.tolist())))
  f_s = rng.normal(size=(8, 5)).astype(np.float64)
  f_t = rng.normal(size=(8, 7)).astype(np.float64)
  expected = _class_loss_loop(f_s, f_t, labels)
  got = class_gram_loss(f_s.astype(np.float32), f_t.astype(np.float32), labels, 10)
  close(got, expected, atol=1e-6)
  if expected == 0.0:
    assert float(got) == 0.0


def test_class_gram_loss_zero_feature_has_finite_grad():
  f_s = np.ones((4, 3), np.float32)
  f_s[1] = 0.0  # e.g. a dead post-ReLU pooled feature
  f_t = np.arange(20, dtype=np.float32).reshape(4, 5)
  g = jax.grad(class_gram_loss)(f_s, f_t, np.array([0, 0, 1, 1], np.int32), 2)
  assert np.all(np.isfinite(g))


def test_class_gram_loss_jits_once():
  fn = jax.jit(chex.assert_max_traces(class_gram_loss, n=1), static_argnums=3)
  rng = np.random.default_rng(0)
  for _ in range(3):
    labels = rng.integers(0, 4, size=16).astype(np.int32)
    f_s = rng.normal(size=(16, 6)).astype(np.float32)
    f_t = rng.normal(size=(16, 9)).astype(np.float32)
    close(fn(f_s, f_t, labels, 4), _class_loss_loop(f_s, f_t, labels), atol=1e-6)


def test_cid_context_update():
  d, meta = load_fixture('cid_context_update')
  s = meta['settings']
  t = float(d['T'][0])
  acc0 = init_context_accumulator(s['num_classes'], s['ds'])
  # one batch from zero, cu = 0
  acc = context_accumulate(acc0, d['one/fea_s'], d['one/logit_t'], d['one/labels'], t)
  close(acc.weight, d['one/current_num'])
  close(context_finalize(acc, None), d['one/context_new'])
  close(context_finalize(acc, jnp.ones((s['num_classes'], s['ds'])), 0.0),
        d['one/returned_context'])
  # two batches, state carried, then mixed with the old dictionary
  acc = acc0
  for i in range(2):
    acc = context_accumulate(acc, d[f'two/fea_s{i}'], d[f'two/logit_t{i}'], d[f'two/labels{i}'], t)
    close(acc.weight, d[f'two/current_num_after{i}'])
    close(context_finalize(acc, None), d[f'two/context_new_after{i}'])
  cu = float(d['two/cu'][0])
  assert cu == s['cu']
  close(context_finalize(acc, d['two/old_context'], cu), d['two/returned_context'])
  # classes never seen this epoch: D_new is exactly 0, so only cu * D_old survives
  unseen = np.setdiff1d(np.arange(s['num_classes']),
                        np.concatenate([d['two/labels0'], d['two/labels1']]))
  assert unseen.size > 0
  np.testing.assert_array_equal(context_finalize(acc, None)[unseen], 0.0)
  np.testing.assert_array_equal(d['two/context_new_after1'][unseen], 0.0)
  # order independence: permuting the batch does not change the dictionary
  perm = np.random.default_rng(0).permutation(len(d['one/labels']))
  acc_p = context_accumulate(acc0, d['one/fea_s'][perm], d['one/logit_t'][perm],
                             d['one/labels'][perm], t)
  close(context_finalize(acc_p, None), d['one/context_new'])


def _scalar(d, k):
  return float(d[k].reshape(-1)[0])


def test_cid_phase1_loss():
  d, meta = load_fixture('cid_phase1_loss')
  s = meta['settings']
  t, a, b, c = (_scalar(d, k) for k in ('T', 'aa', 'bb', 'cc'))
  reg = SampleRegressor(s['dt'])

  def loss_fn(params, f_s, logit_s):
    reg_out = reg.apply({'params': params}, f_s)
    return cid_loss(logit_s, d['logit_t'], f_s, d['f_t'], d['labels'], reg_out,
                    interventional_logits=None, temperature=t, num_classes=s['num_classes'],
                    a=a, b=b, c=c)

  (loss, terms), (g_p, g_fs, g_ls) = jax.jit(
      jax.value_and_grad(loss_fn, argnums=(0, 1, 2), has_aux=True))(
      _linear(d, 'reg'), d['f_s'], d['logit_s'])
  assert 'ce' not in terms  # no hard-label CE in the init phase
  close(terms['kl'], d['loss_kl'])
  close(terms['sample'], d['loss_sample'])
  close(terms['class'], d['loss_class'])
  close(loss, d['loss'])
  close(g_fs, d['grad_f_s'])
  close(g_ls, d['grad_logit_s'])
  close(g_p['linear']['kernel'], d['grad_reg_weight'].T)
  close(g_p['linear']['bias'], d['grad_reg_bias'])
  # epoch == init_epochs also builds the first dictionary (no cu mixing)
  acc = context_accumulate(init_context_accumulator(s['num_classes'], s['ds']), d['f_s'],
                           d['logit_t'], d['labels'], t)
  close(acc.weight, d['current_num'])
  close(context_finalize(acc, None), d['context_new'])


def test_cid_phase2_loss():
  d, meta = load_fixture('cid_phase2_loss')
  s = meta['settings']
  t, a, b, c = (_scalar(d, k) for k in ('T', 'aa', 'bb', 'cc'))
  reg = SampleRegressor(s['dt'])
  head = InterventionalHead(s['num_classes'])
  params = {'reg': _linear(d, 'reg'), 'fc_new': _linear(d, 'fc_new')}
  init = jax.eval_shape(lambda: head.init(jax.random.PRNGKey(0), d['f_s'], d['logit_s'],
                                          d['context'], t))['params']
  chex.assert_trees_all_equal_shapes(init, params['fc_new'])

  names = ('loss', 'loss_cls', 'loss_kl', 'loss_sample', 'loss_class')

  def objectives(params, f_s, logit_s, context):
    reg_out = reg.apply({'params': params['reg']}, f_s)
    z_do = interventional_logits(params['fc_new'], f_s, logit_s, context, t)
    total, terms = cid_loss(logit_s, d['logit_t'], f_s, d['f_t'], d['labels'], reg_out,
                            interventional_logits=z_do, temperature=t,
                            num_classes=s['num_classes'], a=a, b=b, c=c)
    vals = jnp.stack([total, terms['ce'], terms['kl'], terms['sample'], terms['class']])
    return vals, (vals, (z_do, reg_out))

  # the total and the four unweighted terms, all differentiated in one Jacobian
  (j_p, j_fs, j_ls, j_ctx), (vals, (z_do, reg_out)) = jax.jit(jax.jacrev(
      objectives, argnums=(0, 1, 2, 3), has_aux=True))(params, d['f_s'], d['logit_s'],
                                                        d['context'])
  close(z_do, d['logits_new'])
  close(reg_out, d['reg_out'])
  for i, name in enumerate(names):
    close(vals[i], d[name])
  close(j_fs[0], d['grad_f_s'])
  close(j_ls[0], d['grad_logit_s'])
  close(j_p['reg']['linear']['kernel'][0], d['grad_reg_weight'].T)
  close(j_p['reg']['linear']['bias'][0], d['grad_reg_bias'])
  close(j_p['fc_new']['linear']['kernel'][0], d['grad_fc_new_weight'].T)
  close(j_p['fc_new']['linear']['bias'][0], d['grad_fc_new_bias'])
  for i, name in enumerate(names[1:], start=1):
    close(j_fs[i], d[f'grad_{name}/f_s'])
    close(j_ls[i], d[f'grad_{name}/logit_s'])
  # no gradient into the dictionary (and none through the intervention probabilities:
  # grad_loss_cls/logit_s above is zero)
  assert not np.any(np.asarray(j_ctx))
  assert not np.any(np.asarray(j_ls[1]))
