"""Teacher BatchNorm folding (kdjax.models.fold): same outputs as the PyTorch reference."""
from __future__ import annotations

import chex
import jax
import numpy as np
import pytest

from conftest import load_fixture, nchw_to_nhwc, torch_state_dict
from kdjax.models.fold import conv_bn_pairs, fold_batchnorm
from kdjax.models.torch_import import convert_state_dict

# fixture -> (model, tolerance relative to max|reference|, conv->BN pairs folded)
CASES = {
    'rd_resnet8x4': ('resnet8x4', 1e-5, 10),  # stem + 3 x (2 convs + projection)
    'rd_wrn_16_2': ('wrn_16_2', 1e-5, 6),   # stem output is also a feature: not folded
    'rd_MobileNetV2': ('MobileNetV2', 1e-4, None),
    'rd_ShuffleV2': ('ShuffleV2', 1e-4, None),
}


def _close(got, ref, tol, what):
  atol = tol * max(1.0, float(np.abs(ref).max()))
  np.testing.assert_allclose(np.asarray(got, np.float32), ref, rtol=0, atol=atol, err_msg=what)


@pytest.mark.parametrize('fixture', sorted(CASES))
def test_folded_teacher_matches_reference(fixture):
  arrays, _ = load_fixture(fixture)
  name, tol, n_pairs = CASES[fixture]
  model, variables = convert_state_dict(name, torch_state_dict(arrays), num_classes=100)
  x = nchw_to_nhwc(arrays['x'])
  pairs = conv_bn_pairs(model, variables, x)
  if n_pairs is not None:
    assert len(pairs) == n_pairs, pairs
  assert pairs, 'nothing folded'
  folded = fold_batchnorm(model, variables, x)
  chex.assert_trees_all_equal_shapes_and_dtypes(folded, variables)
  conv_path, bn_path = pairs[0]
  assert not np.allclose(_get(folded['params'], conv_path)['kernel'],
                         _get(variables['params'], conv_path)['kernel'])
  np.testing.assert_array_equal(_get(folded['batch_stats'], bn_path)['mean'], 0.0)
  apply = jax.jit(model.apply, static_argnames=('train', 'preact'))
  for preact in (False, True):
    logits, feats = apply(folded, x, train=False, preact=preact)
    _close(logits, arrays['logits'], tol, f'{fixture} logits')
    prefix = 'preact_feat' if preact else 'feat'
    for i, f in enumerate(feats):
      _close(f, nchw_to_nhwc(arrays[f'{prefix}{i}']), tol, f'{fixture} {prefix}{i}')


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def test_fold_keeps_a_conv_output_that_is_also_read_elsewhere():
  """A conv whose output is returned AND normalised must keep its kernel."""
  import flax.linen as nn
  from kdjax.models.layers import BatchNorm, conv

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train=False, preact=False):
      a = conv(4, name='a')(x)
      b = conv(4, name='b')(x)
      return BatchNorm(name='bn_a')(a, train) + BatchNorm(name='bn_b')(b, train), [b]

  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 3))
  net = Net()
  v = net.init(jax.random.PRNGKey(1), x)
  v = jax.tree.map(lambda a: a + 0.3, v)  # non-trivial statistics
  assert conv_bn_pairs(net, v, x) == [(('a',), ('bn_a',))]
  folded = fold_batchnorm(net, v, x)
  np.testing.assert_array_equal(folded['params']['b']['kernel'], v['params']['b']['kernel'])
  for got, want in zip(jax.tree.leaves(net.apply(folded, x)), jax.tree.leaves(net.apply(v, x))):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
