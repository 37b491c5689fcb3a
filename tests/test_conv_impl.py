"""Convolution lowerings (kdjax.models.layers.conv_impl): same values and gradients."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdjax.models import create_model, layers


@pytest.fixture
def restore_conv_impl():
  yield
  layers.set_conv_impl(None)


def test_default_lowering_is_xla_on_cpu():
  assert layers.conv_impl() == 'xla'  # measured on CPU (results/benchmark_cpu_torch*.md)


def test_unknown_lowering_is_refused():
  with pytest.raises(ValueError, match='accepted: xla, matmul_grad'):
    layers.set_conv_impl('winograd')


@pytest.mark.parametrize('shape', [(8, 5, 6, 1, 3), (9, 4, 6, 2, 3), (8, 4, 6, 2, 1)])
def test_matmul_grad_convolution_gradients(shape):
  """Odd and even sizes, stride 1 and 2, 3x3 and 1x1 (the ResNet projection)."""
  h, cin, cout, s, k = shape
  x = jax.random.normal(jax.random.PRNGKey(0), (2, h, h, cin))
  w = jax.random.normal(jax.random.PRNGKey(1), (k, k, cin, cout))
  pad = ((k // 2, k // 2),) * 2
  ref = lambda x, w: jnp.sum(jnp.sin(jax.lax.conv_general_dilated(
      x, w, (s, s), pad, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))))
  ours = lambda x, w: jnp.sum(jnp.sin(layers._conv_matmul_grad(x, w, (s, s), pad)))
  np.testing.assert_allclose(ours(x, w), ref(x, w), rtol=1e-6)
  for got, want in zip(jax.grad(ours, (0, 1))(x, w), jax.grad(ref, (0, 1))(x, w)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))


def test_matmul_grad_model_gradients_match_xla(restore_conv_impl):
  model = create_model('resnet8', 10)
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 32, 32, 3))
  y = jnp.arange(4) % 10
  v = model.init(jax.random.PRNGKey(1), x[:2], train=False)

  def grads():
    def loss(p):
      logits, _ = model.apply({'params': p, 'batch_stats': v['batch_stats']}, x, train=True,
                              mutable=['batch_stats'])[0]
      return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
    return jax.jit(jax.grad(loss))(v['params'])

  layers.set_conv_impl('xla')
  want = grads()
  layers.set_conv_impl('matmul_grad')
  got = grads()
  for path, g in jax.tree_util.tree_leaves_with_path(got):
    ref = np.asarray(_at(want, path))
    np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(ref).max())),
                               err_msg=jax.tree_util.keystr(path))


def _at(tree, path):
  for k in path:
    tree = tree[k.key]
  return tree
