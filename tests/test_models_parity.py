"""Forward parity of the model zoo with the official PyTorch models (../shared/fixtures).

Every fixture goes through ``torch_import`` exactly as a user's checkpoint would, then
eval-mode logits/features, train-mode logits and the running statistics after one
train-mode forward are compared. Tolerances are absolute, scaled by the magnitude of
the reference array (deep features reach ~30, where float32 summation-order noise is
~1e-4 absolute but ~1e-6 relative).
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_fixture, nchw_to_nhwc, torch_state_dict
from kdjax.models import create_generator, torch_to_flax
from kdjax.models.torch_import import convert_state_dict, split_torch_key

# fixture -> (registered model, tolerance relative to max|reference|)
CLASSIFIERS = {
    'rd_resnet8': ('resnet8', 1e-5),
    'rd_resnet8x4': ('resnet8x4', 1e-5),
    'rd_resnet20': ('resnet20', 1e-4),
    'rd_wrn_16_2': ('wrn_16_2', 1e-5),
    'rd_vgg8': ('vgg8', 1e-5),
    'rd_MobileNetV2': ('MobileNetV2', 1e-4),
    'rd_ShuffleV1': ('ShuffleV1', 1e-4),
    'rd_ShuffleV2': ('ShuffleV2', 1e-4),
    'fd_resnet_basic_1111': ('resnet_basic_1111', 1e-5),
    'fd_vgg11_bn': ('vgg11', 1e-4),
    'fd_wrn_16_1': ('wrn_16_1', 1e-5),
}


def _close(got, ref: np.ndarray, tol: float, what: str) -> None:
  got = np.asarray(got, np.float32)
  assert got.shape == ref.shape, f'{what}: shape {got.shape} != {ref.shape}'
  atol = tol * max(1.0, float(np.abs(ref).max()))
  np.testing.assert_allclose(got, ref, rtol=0, atol=atol, err_msg=what)


def _check_running(batch_stats: dict, arrays: dict[str, np.ndarray], tol: float) -> int:
  """Compares every ``train_running/<bn>.running_*``; returns how many were checked."""
  n = 0
  for key, ref in arrays.items():
    if not key.startswith('train_running/') or key.endswith('num_batches_tracked'):
      continue
    path, leaf = split_torch_key(key[len('train_running/'):])
    node = batch_stats
    for p in path:
      node = node[p]
    _close(node[{'running_mean': 'mean', 'running_var': 'var'}[leaf]], ref, tol, key)
    n += 1
  return n


@pytest.fixture(scope='module', params=sorted(CLASSIFIERS))
def converted(request):
  arrays, meta = load_fixture(request.param)
  name, tol = CLASSIFIERS[request.param]
  model, variables = convert_state_dict(name, torch_state_dict(arrays), num_classes=100)
  return request.param, arrays, meta, model, variables, tol


def test_eval_logits_and_features(converted):
  fixture, arrays, meta, model, variables, tol = converted
  x = nchw_to_nhwc(arrays['x'])
  apply = jax.jit(model.apply, static_argnames=('train', 'preact'))
  logits, feats = apply(variables, x, train=False, preact=False)
  _close(logits, arrays['logits'], tol, f'{fixture} logits')
  if fixture.startswith('fd_'):
    _close(feats[-1], arrays['feature'], tol, f'{fixture} feature')
    return
  assert len(feats) == meta['n_feats']
  for i, f in enumerate(feats):
    _close(f, nchw_to_nhwc(arrays[f'feat{i}']), tol, f'{fixture} feat{i}')
  logits_pre, pre = apply(variables, x, train=False, preact=True)
  _close(logits_pre, arrays['logits'], tol, f'{fixture} logits (preact)')
  assert len(pre) == meta['n_preact_feats']
  for i, f in enumerate(pre):
    _close(f, nchw_to_nhwc(arrays[f'preact_feat{i}']), tol, f'{fixture} preact_feat{i}')


def test_train_mode_logits_and_running_stats(converted):
  fixture, arrays, _, model, variables, tol = converted
  x = nchw_to_nhwc(arrays['x'])
  (logits, feats), updates = jax.jit(
      lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))(variables, x)
  _close(logits, arrays['train_logits'], tol, f'{fixture} train_logits')
  if 'train_feature' in arrays:
    _close(feats[-1], arrays['train_feature'], tol, f'{fixture} train_feature')
  assert _check_running(updates['batch_stats'], arrays, tol) > 0


def test_parameter_count_matches_reference_state_dict(converted):
  _, arrays, _, _, variables, _ = converted
  sd = torch_state_dict(arrays)
  ref = sum(v.size for k, v in sd.items()
            if not k.endswith(('running_mean', 'running_var', 'num_batches_tracked')))
  assert sum(p.size for p in jax.tree.leaves(variables['params'])) == ref


def test_generator_parity():
  arrays, meta = load_fixture('fd_generator')
  cfg = {'nz': 256, 'ngf': 64, 'img_size': 32, 'nc': 3}
  assert f"Generator(**{cfg}" in meta['constructor']
  gen = create_generator(**cfg)
  z = arrays['z']
  variables = torch_to_flax(gen, torch_state_dict(arrays), jnp.zeros((1, cfg['nz'])), train=False)
  img = gen.apply(variables, z, train=False)
  chex.assert_shape(img, (z.shape[0], 32, 32, 3))
  _close(img, nchw_to_nhwc(arrays['img']), 1e-5, 'img')
  train_img, updates = gen.apply(variables, z, train=True, mutable=['batch_stats'])
  _close(train_img, nchw_to_nhwc(arrays['train_img']), 1e-5, 'train_img')
  assert _check_running(updates['batch_stats'], arrays, 1e-5) == 6


def test_bfloat16_compute_keeps_float32_params():
  arrays, _ = load_fixture('rd_resnet8')
  model, variables = convert_state_dict('resnet8', torch_state_dict(arrays), 100,
                                        dtype=jnp.bfloat16)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  logits, feats = model.apply(variables, nchw_to_nhwc(arrays['x']), train=False)
  assert logits.dtype == jnp.float32
  assert feats[1].dtype == jnp.bfloat16
  ref = arrays['logits']
  # bf16 has an 8-bit mantissa: agreement to a few percent of the logit range.
  np.testing.assert_allclose(logits, ref, atol=0.05 * np.abs(ref).max())
