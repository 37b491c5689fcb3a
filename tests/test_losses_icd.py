"""Parity of the ICD heads and loss with the reference fixture (spec §4, §7)."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import pytest

from conftest import load_fixture
from conftest import close
from kdjax.losses import icd_logits, icd_loss
from kdjax.models.heads import ICDHeads



@pytest.mark.parametrize('case', ['case0', 'case1'])
def test_icd_loss(case):
  d, meta = load_fixture('icd_loss')
  s = meta['settings']
  heads = ICDHeads(s['feat_dim'])
  g = lambda k: d[f'{case}/{k}']
  params = {
      'embed_s': {'kernel': g('embed_s.weight').T, 'bias': g('embed_s.bias')},
      'embed_t': {'kernel': g('embed_t.weight').T, 'bias': g('embed_t.bias')},
      'log_scale': jnp.asarray(g('tau_param').reshape(())),
      'bias': jnp.asarray(g('b_param').reshape(())),
  }
  init = jax.eval_shape(heads.init, jax.random.PRNGKey(0), g('f_s'), g('f_t'))['params']
  chex.assert_trees_all_equal_shapes(init, params)
  defaults = ICDHeads(8).init(jax.random.PRNGKey(0), g('f_s')[:1, :2], g('f_t')[:1, :2])['params']
  assert float(defaults['log_scale']) == 1.0 and float(defaults['bias']) == 0.0

  names = ('total', 'contrastive', 'invariance')

  def objectives(params, f_s, f_t):
    e_s, e_t, theta, b = heads.apply({'params': params}, f_s, f_t)
    total, parts = icd_loss(e_s, e_t, theta, b, max_scale=s['max_tau'], alpha_inv=s['alpha'])
    parts = dict(parts, total=total)
    vals = jnp.stack([parts[n] for n in names])
    return vals, (vals, icd_logits(e_s, e_t, theta, b, s['max_tau']))

  # one Jacobian gives the gradients of all three objectives
  (j_p, j_fs, j_ft), (vals, logits) = jax.jit(jax.jacrev(objectives, argnums=(0, 1, 2),
                                                         has_aux=True))(params, g('f_s'), g('f_t'))
  chex.assert_shape(vals, (3,))
  close(logits, g('logits'))
  close(vals[0], vals[1] + s['alpha'] * vals[2])
  for i, which in enumerate(names):
    close(vals[i], g(f'{which}_loss'))
    gk = f'grad_{which}'
    close(j_fs[i], g(f'{gk}/f_s'))
    close(j_ft[i], g(f'{gk}/f_t'))
    for side in ('embed_s', 'embed_t'):
      close(j_p[side]['kernel'][i], g(f'{gk}/{side}_weight').T)
      close(j_p[side]['bias'][i], g(f'{gk}/{side}_bias'))
    close(j_p['log_scale'][i], g(f'{gk}/tau'))
    close(j_p['bias'][i], g(f'{gk}/b'))
    if meta['cases'][case]['clamped']:
      assert float(j_p['log_scale'][i]) == 0.0  # clamped scale: exactly zero gradient
