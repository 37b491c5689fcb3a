"""Parity of the CRD criterion, memory and heads with the reference fixtures (spec §2, §7)."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_fixture
from conftest import close
from kdjax.losses import CRDMemory, contrast_loss, crd_loss, crd_scores, init_crd_memory, negative_window, sample_negatives, sample_negatives_exact, sample_negatives_other_class
from kdjax.losses import crd as crd_module
from kdjax.models.heads import Embed



def test_crd_contrast_loss():
  d, meta = load_fixture('crd_contrast_loss')
  n_data = int(d['n_data'][0])
  assert n_data == meta['settings']['n_data']
  loss, g = jax.value_and_grad(contrast_loss)(d['x'], n_data)
  chex.assert_shape(loss, ())
  close(loss, d['loss'].reshape(()))
  close(g, d['grad_x'])


def _linear(d, name):
  return {'linear': {'kernel': d[f'{name}/linear.weight'].T, 'bias': d[f'{name}/linear.bias']}}


@pytest.mark.parametrize('scoring', ['row_gather', 'whole_bank'])
def test_crd_full_two_steps(scoring, monkeypatch):
  # both ways of scoring the bank (losses.crd.bank_dots) must reproduce the reference
  monkeypatch.setattr(crd_module, 'FULL_BANK_RATIO', 0 if scoring == 'row_gather' else 10**9)
  d, meta = load_fixture('crd_full')
  s = meta['settings']
  embed = Embed(s['feat_dim'])
  params = {'s': _linear(d, 'embed_s'), 't': _linear(d, 'embed_t')}
  init = jax.eval_shape(embed.init, jax.random.PRNGKey(0), d['step0/f_s'])['params']
  chex.assert_trees_all_equal_shapes(init, params['s'])
  z0 = d['params_init'][2:4]
  memory = CRDMemory(jnp.asarray(d['memory_v1_init']), jnp.asarray(d['memory_v2_init']),
                     jnp.asarray(z0[0]), jnp.asarray(z0[1]))
  assert np.all(z0 < 0)  # unset until the first batch

  def loss_fn(params, f_s, f_t, idx, cidx, memory):
    v_s = embed.apply({'params': params['s']}, f_s)
    v_t = embed.apply({'params': params['t']}, f_t)
    out_s, out_t, z_s, z_t = crd_scores(v_s, v_t, cidx, memory, s['nce_t'])
    loss, new_memory = crd_loss(v_s, v_t, idx, cidx, memory, s['nce_t'], s['nce_m'])
    return loss, (new_memory, out_s, out_t, contrast_loss(out_s, s['n_data']),
                  contrast_loss(out_t, s['n_data']))

  step = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1, 2), has_aux=True))
  for k in ('step0', 'step1'):
    (loss, (memory, out_s, out_t, s_loss, t_loss)), (g_p, g_fs, g_ft) = step(
        params, d[f'{k}/f_s'], d[f'{k}/f_t'], d[f'{k}/idx'], d[f'{k}/contrast_idx'], memory)
    chex.assert_shape(out_s, (s['B'], s['nce_k'] + 1))
    # Z in the thousands, scores ~1e-3: compare relatively
    close(memory.z_s, d[f'{k}/Z_v1'].reshape(()), atol=0)
    close(memory.z_t, d[f'{k}/Z_v2'].reshape(()), atol=0)
    close(out_s, d[f'{k}/out_v1'][..., 0], atol=1e-8)
    close(out_t, d[f'{k}/out_v2'][..., 0], atol=1e-8)
    close(s_loss, d[f'{k}/s_loss'].reshape(()))
    close(t_loss, d[f'{k}/t_loss'].reshape(()))
    close(loss, d[f'{k}/loss'].reshape(()))
    close(memory.memory_s, d[f'{k}/memory_v1_after'])
    close(memory.memory_t, d[f'{k}/memory_v2_after'])
    close(g_fs, d[f'{k}/grad/f_s'])
    close(g_ft, d[f'{k}/grad/f_t'])
    for side, name in (('s', 'embed_s'), ('t', 'embed_t')):
      close(g_p[side]['linear']['kernel'], d[f'{k}/grad/{name}_weight'].T)
      close(g_p[side]['linear']['bias'], d[f'{k}/grad/{name}_bias'])


def test_crd_memory_init_and_update_keep_unit_rows():
  n_data, dim, b, k = 50, 16, 8, 10
  mem = jax.jit(init_crd_memory, static_argnums=(1, 2))(jax.random.PRNGKey(0), n_data, dim)
  stdv = 1 / np.sqrt(dim / 3)
  assert np.abs(mem.memory_s).max() <= stdv and np.abs(mem.memory_t).max() <= stdv
  assert float(mem.z_s) < 0 and float(mem.z_t) < 0
  rng = np.random.default_rng(1)
  v_s, v_t = (v / np.linalg.norm(v, axis=1, keepdims=True)
              for v in rng.normal(size=(2, b, dim)).astype(np.float32))
  idx = rng.permutation(n_data)[:b].astype(np.int32)
  cidx = np.concatenate([idx[:, None], rng.integers(0, n_data, (b, k))], 1).astype(np.int32)
  step = jax.jit(crd_loss)
  loss, new = step(v_s, v_t, idx, cidx, mem)
  assert np.isfinite(loss)
  for m_old, m_new in ((mem.memory_s, new.memory_s), (mem.memory_t, new.memory_t)):
    close(np.linalg.norm(m_new[idx], axis=1), np.ones(b), atol=1e-6)
    untouched = np.setdiff1d(np.arange(n_data), np.asarray(idx))
    np.testing.assert_array_equal(m_new[untouched], m_old[untouched])
  assert float(new.z_s) > 0 and float(new.z_t) > 0
  # Z is frozen after the first call
  _, newer = step(v_t, v_s, idx, cidx, new)
  assert float(newer.z_s) == float(new.z_s) and float(newer.z_t) == float(new.z_t)


def test_sample_negatives():
  idx = jnp.arange(6, dtype=jnp.int32) * 3
  cidx = sample_negatives(jax.random.PRNGKey(0), idx, 20, 100)
  chex.assert_shape(cidx, (6, 101))
  chex.assert_type(cidx, jnp.int32)
  np.testing.assert_array_equal(cidx[:, 0], idx)
  assert cidx.min() >= 0 and cidx.max() < 20


def test_sample_negatives_other_class():
  labels_all = np.random.default_rng(0).integers(0, 5, size=40)
  order = np.argsort(labels_all, kind='stable')
  count = np.bincount(labels_all, minlength=5)
  start = np.concatenate([[0], np.cumsum(count)[:-1]])
  idx = jnp.arange(0, 40, 4, dtype=jnp.int32)
  cidx = jax.jit(sample_negatives_other_class, static_argnums=6)(
      jax.random.PRNGKey(0), idx, labels_all[np.asarray(idx)], order, start, count, 200)
  np.testing.assert_array_equal(cidx[:, 0], idx)
  neg_labels = labels_all[np.asarray(cidx[:, 1:])]
  assert np.all(neg_labels != labels_all[np.asarray(idx)][:, None])
  # every other-class example is reachable
  row = np.asarray(cidx[0, 1:])
  assert set(row) == set(np.flatnonzero(labels_all != labels_all[0]))


def test_sample_negatives_exact_distinct_other_class_and_uniform():
  """RepDistiller's exact mode: each row k DISTINCT examples of other classes, every
  k-subset equally likely (checked through the per-example frequencies)."""
  labels_all = np.random.default_rng(0).integers(0, 3, size=30).astype(np.int32)
  counts = np.bincount(labels_all)
  k = 30 - counts.max()  # the largest k the window allows: the whole other-class set for some rows
  idx = jnp.array([0, 5, 9, 17], jnp.int32)
  row_labels = labels_all[np.asarray(idx)]
  draw = jax.jit(jax.vmap(lambda key: sample_negatives_exact(
      key, idx, jnp.asarray(row_labels), jnp.asarray(labels_all),
      negative_window(k, int(counts.max())), k)))
  cidx = np.asarray(draw(jax.random.split(jax.random.PRNGKey(0), 4000)))
  chex.assert_shape(cidx, (4000, 4, k + 1))
  assert cidx.dtype == np.int32
  np.testing.assert_array_equal(cidx[:, :, 0], np.broadcast_to(idx, (4000, 4)))
  neg = cidx[:, :, 1:]
  assert np.all(labels_all[neg] != row_labels[None, :, None])
  assert all(len(set(r)) == k for r in neg.reshape(-1, k))  # without replacement
  for b, y in enumerate(row_labels):
    others = np.flatnonzero(labels_all != y)
    freq = np.bincount(neg[:, b].ravel(), minlength=30)[others] / 4000
    # inclusion probability of each other-class example: k / |others| (+-5 sigma)
    p = k / len(others)
    np.testing.assert_allclose(freq, p, atol=5 * np.sqrt(p * (1 - p) / 4000) + 1e-9)


def test_bank_dots_whole_bank_matches_row_gather_with_gradients(monkeypatch):
  """The whole-bank matmul and the row gather are the same function of the embeddings."""
  from kdjax.losses.crd import bank_dots
  k_bank, k_v, k_idx = jax.random.split(jax.random.PRNGKey(3), 3)
  bank = jax.random.normal(k_bank, (300, 16))
  v = jax.random.normal(k_v, (8, 16))
  cidx = jax.random.randint(k_idx, (8, 101), 0, 300)
  results = {}
  for ratio in (0, 10**9):
    monkeypatch.setattr(crd_module, 'FULL_BANK_RATIO', ratio)
    weights = jnp.linspace(-1.0, 1.0, 8 * 101).reshape(8, 101)
    f = lambda v: jnp.sum(jnp.exp(bank_dots(bank, v, cidx) / 4.0) * weights)
    results[ratio] = jax.value_and_grad(f)(v)
  gathered, whole = results[0], results[10**9]
  chex.assert_trees_all_close(whole, gathered, rtol=1e-5, atol=1e-6)
