"""Parity of the KD, FitNet, AT and SP losses with the reference fixtures (spec §2, §7)."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_fixture, nchw_to_nhwc
from conftest import close
from kdjax.losses import adaptive_avg_pool, at_loss, attention_map, hint_loss, kl_div_loss, similarity_loss
from kdjax.models.heads import ConvRegressor



def test_kd_distillkl():
  d, meta = load_fixture('kd_distillkl')
  t = float(d['T'].reshape(-1)[0])
  assert t == meta['settings']['T']
  loss, (g_s, g_t) = jax.value_and_grad(kl_div_loss, argnums=(0, 1))(d['y_s'], d['y_t'], t)
  chex.assert_shape(loss, ())
  chex.assert_type(loss, jnp.float32)
  close(loss, d['loss'])
  close(g_s, d['grad_y_s'])
  close(g_t, d['grad_y_t'])


def _convreg_variables(d, case):
  w = d[f'{case}/convreg/conv.weight']
  params = {
      # Conv2d (O, I, kh, kw) -> (kh, kw, I, O); ConvTranspose2d (I, O, kh, kw) ->
      # (kh, kw, O, I), the transpose_kernel layout: the same permutation in both cases.
      'conv': {'kernel': w.transpose(2, 3, 1, 0), 'bias': d[f'{case}/convreg/conv.bias']},
      'bn': {'scale': d[f'{case}/convreg/bn.weight'], 'bias': d[f'{case}/convreg/bn.bias']},
  }
  stats = {'bn': {'mean': d[f'{case}/convreg/bn.running_mean'],
                  'var': d[f'{case}/convreg/bn.running_var']}}
  return params, stats


@pytest.mark.parametrize('case', ['case0', 'case1', 'case2'])
@pytest.mark.parametrize('mode', ['train', 'eval'])
def test_fitnet_hint(case, mode):
  d, meta = load_fixture('fitnet_hint')
  shapes = meta['cases'][case]
  to_nhwc = lambda s: (s[0], s[2], s[3], s[1])
  model = ConvRegressor(to_nhwc(shapes['s_shape']), to_nhwc(shapes['t_shape']))
  f_s, f_t = nchw_to_nhwc(d[f'{case}/f_s']), nchw_to_nhwc(d[f'{case}/f_t'])
  params, stats = _convreg_variables(d, case)

  init = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), f_s, train=False))
  chex.assert_trees_all_equal_shapes(init['params'], params)
  chex.assert_trees_all_equal_shapes(init['batch_stats'], stats)

  train = mode == 'train'

  def loss_fn(params, f_s):
    out, new_vars = model.apply({'params': params, 'batch_stats': stats}, f_s, train=train,
                                mutable=['batch_stats'])
    return hint_loss(out, f_t), (out, new_vars['batch_stats'])

  (loss, (out, new_stats)), (g_p, g_x) = jax.jit(jax.value_and_grad(
      loss_fn, argnums=(0, 1), has_aux=True))(params, f_s)
  chex.assert_shape(out, f_t.shape)
  close(out, nchw_to_nhwc(d[f'{case}/{mode}_out']))
  close(loss, d[f'{case}/{mode}_loss'])
  g = f'{case}/{mode}_grad'
  close(g_x, nchw_to_nhwc(d[f'{g}/f_s']))
  close(g_p['conv']['kernel'], d[f'{g}/conv_weight'].transpose(2, 3, 1, 0))
  close(g_p['conv']['bias'], d[f'{g}/conv_bias'])
  close(g_p['bn']['scale'], d[f'{g}/bn_weight'])
  close(g_p['bn']['bias'], d[f'{g}/bn_bias'])
  if train:  # running stats updated with momentum 0.1 and the unbiased variance
    close(new_stats['bn']['mean'], d[f'{case}/train_running/bn.running_mean'])
    close(new_stats['bn']['var'], d[f'{case}/train_running/bn.running_var'])
  else:
    chex.assert_trees_all_equal(new_stats, stats)


def test_fitnet_init_matches_torch_bounds():
  model = ConvRegressor((2, 4, 4, 8), (2, 8, 8, 16))  # transposed case
  params = jax.jit(model.init, static_argnames='train')(
      jax.random.PRNGKey(0), jnp.zeros((2, 4, 4, 8)), train=True)['params']
  bound = 1 / np.sqrt(16 * 16)  # torch ConvTranspose fan_in = out_channels * kh * kw
  assert np.abs(params['conv']['kernel']).max() <= bound
  assert np.abs(params['conv']['kernel']).max() > 0.9 * bound


def test_at_attention():
  d, meta = load_fixture('at_attention')
  p = meta['groups']['p2']['p']
  n = len(meta['groups']['p2']['pairs'])
  f_s = [nchw_to_nhwc(d[f'p2/f_s{i}']) for i in range(n)]
  f_t = [nchw_to_nhwc(d[f'p2/f_t{i}']) for i in range(n)]

  def total(fs):
    losses = at_loss(fs, f_t, p)
    return sum(losses), losses

  (loss_sum, losses), grads = jax.jit(jax.value_and_grad(total, has_aux=True))(f_s)
  close(loss_sum, d['p2/loss_sum'])
  for i in range(n):
    close(losses[i], d[f'p2/loss{i}'])
    close(grads[i], nchw_to_nhwc(d[f'p2/grad_f_s{i}']))
    s = f_s[i]
    if s.shape[1] > f_t[i].shape[1]:
      s = adaptive_avg_pool(s, f_t[i].shape[1:3])
    close(attention_map(s, p), d[f'p2/at_s{i}'])


def test_at_signed_power():
  f = jnp.full((1, 2, 2, 3), -1.0)
  assert np.all(np.asarray(attention_map(f, 3)) < 0)  # f**3, not |f|**3
  assert np.all(np.asarray(attention_map(f, 2)) > 0)


@pytest.mark.parametrize('size_in,size_out', [((8, 8), (4, 4)), ((7, 5), (3, 2)), ((6, 6), (4, 4))])
def test_adaptive_avg_pool_bins(size_in, size_out):
  x = np.random.default_rng(0).normal(size=(2, *size_in, 3)).astype(np.float32)
  ref = np.zeros((2, *size_out, 3), np.float32)
  for i in range(size_out[0]):
    h0, h1 = i * size_in[0] // size_out[0], -(-(i + 1) * size_in[0] // size_out[0])
    for j in range(size_out[1]):
      w0, w1 = j * size_in[1] // size_out[1], -(-(j + 1) * size_in[1] // size_out[1])
      ref[:, i, j] = x[:, h0:h1, w0:w1].mean(axis=(1, 2))
  close(adaptive_avg_pool(jnp.asarray(x), size_out), ref, atol=1e-6)


def test_sp_similarity():
  d, _ = load_fixture('sp_similarity')
  f_s, f_t = nchw_to_nhwc(d['f_s']), nchw_to_nhwc(d['f_t'])
  loss, g = jax.jit(jax.value_and_grad(similarity_loss))(f_s, f_t)
  chex.assert_shape(loss, ())
  close(loss, d['loss'].reshape(()))
  close(g, nchw_to_nhwc(d['grad_f_s']))
  # the Gram matrix does not depend on the flatten order
  close(similarity_loss(d['f_s'], d['f_t']), d['loss'].reshape(()))
