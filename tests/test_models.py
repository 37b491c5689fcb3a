"""Model zoo structure: feature shapes, parameter counts, registry and converter errors.

Shapes are checked abstractly (``jax.eval_shape``) so even ResNet50 / vgg19 cost
only a trace.
"""
from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax.models import (CheckpointMismatchError, create_generator, create_model, model_names,
                          torch_to_flax)
from kdjax.models.layers import avg_pool, channel_shuffle
from kdjax.models.torch_import import convert_state_dict, split_torch_key

_R = [(32, 32, 16), (32, 32, 16), (16, 16, 32), (8, 8, 64), (64,)]
_RX4 = [(32, 32, 32), (32, 32, 64), (16, 16, 128), (8, 8, 256), (256,)]
_VGG = [(32, 32, 64), (16, 16, 128), (8, 8, 256), (4, 4, 512), (4, 4, 512), (512,)]
_DF = [(32, 32, 64), (32, 32, 64), (16, 16, 128), (8, 8, 256), (4, 4, 512), (512,)]
_IN = [(16, 16, 64), (8, 8, 64), (4, 4, 128), (2, 2, 256), (1, 1, 512), (512,)]


def _wrn(k: int) -> list[tuple[int, ...]]:
  return [(32, 32, 16), (32, 32, 16 * k), (16, 16, 32 * k), (8, 8, 64 * k), (64 * k,)]


# Per-example feature shapes (NHWC maps, pooled vector last) for a 32x32 input.
EXPECTED_FEATS = {
    **{f'resnet{d}': _R for d in (8, 14, 20, 32, 44, 56, 110)},
    'resnet8x4': _RX4, 'resnet32x4': _RX4,
    **{f'wrn_{d}_{k}': _wrn(k) for d in (16, 40) for k in (1, 2, 4)},
    **{f'vgg{d}': _VGG for d in (8, 11, 13, 16, 19)},
    'ResNet50': [(32, 32, 64), (32, 32, 256), (16, 16, 512), (8, 8, 1024), (4, 4, 2048), (2048,)],
    'MobileNetV2': [(16, 16, 16), (16, 16, 12), (8, 8, 16), (4, 4, 48), (2, 2, 160), (1280,)],
    'ShuffleV1': [(32, 32, 24), (16, 16, 240), (8, 8, 480), (4, 4, 960), (960,)],
    'ShuffleV2': [(32, 32, 24), (16, 16, 116), (8, 8, 232), (4, 4, 464), (1024,)],
    'resnet18': _DF, 'resnet34': _DF, 'resnet_basic_1111': _DF,
    # ImageNet layouts (stride-2 stem + max-pool): a 32x32 input ends at 1x1
    'imagenet_resnet18': _IN, 'imagenet_resnet34': _IN,
    'imagenet_resnet50': [(16, 16, 64), (8, 8, 256), (4, 4, 512), (2, 2, 1024), (1, 1, 2048),
                          (2048,)],
    'imagenet_mobilenetv1': [(8, 8, 128), (4, 4, 256), (2, 2, 512), (1, 1, 1024), (1024,)],
    'imagenet_mobilenetv2': [(8, 8, 24), (4, 4, 32), (2, 2, 96), (1, 1, 1280), (1280,)],
}


def _abstract(name: str, num_classes: int = 100, preact: bool = False):
  model = create_model(name, num_classes=num_classes)
  x = jnp.zeros((2, 32, 32, 3))
  return jax.eval_shape(lambda: model.init_with_output(
      jax.random.key(0), x, train=False, preact=preact))


def test_every_registered_model_has_expectations():
  assert sorted(EXPECTED_FEATS) == model_names()


@pytest.mark.parametrize('name', sorted(EXPECTED_FEATS))
def test_feature_shapes(name):
  for preact in (False, True):
    (logits, feats), variables = _abstract(name, preact=preact)
    chex.assert_shape(logits, (2, 100))
    assert logits.dtype == jnp.float32
    assert len(feats) == len(EXPECTED_FEATS[name])
    chex.assert_shape(feats, [(2,) + s for s in EXPECTED_FEATS[name]])
    assert set(variables) == {'params', 'batch_stats'}


@pytest.mark.parametrize('name', sorted(EXPECTED_FEATS))
def test_bfloat16_forward_traces_with_float32_state(name):
  model = create_model(name, num_classes=10, dtype=jnp.bfloat16)
  x = jnp.zeros((2, 32, 32, 3))
  (logits, feats), variables = jax.eval_shape(lambda: model.init_with_output(
      jax.random.key(0), x, train=True, preact=True))
  assert logits.dtype == jnp.float32
  assert feats[1].dtype == jnp.bfloat16
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}


def _count(name: str) -> int:
  return sum(p.size for p in jax.tree.leaves(_abstract(name)[1]['params']))


@pytest.mark.parametrize('name,millions', [
    ('resnet8x4', '1.23'), ('resnet32x4', '7.43'), ('wrn_40_2', '2.25'), ('resnet56', '0.86')])
def test_parameter_counts_from_spec(name, millions):
  # The papers truncate (wrn_40_2 has 2,255,156 parameters and is quoted as 2.25M).
  assert f'{_count(name) // 10_000 / 100:.2f}' == millions


def test_unknown_model_lists_accepted_names():
  with pytest.raises(ValueError, match=r"unknown model 'resnet9'.*wrn_40_2"):
    create_model('resnet9', num_classes=10)


def test_split_torch_key_folds_numeric_parts():
  assert split_torch_key('layer1.0.downsample.1.weight') == (('layer1_0', 'downsample_1'), 'weight')
  assert split_torch_key('blocks.0.1.conv.3.weight') == (('blocks_0_1', 'conv_3'), 'weight')
  assert split_torch_key('block1.layer.0.bn1.running_var') == (
      ('block1', 'layer_0', 'bn1'), 'running_var')


def _random_state_dict(name: str, num_classes: int = 10) -> dict[str, np.ndarray]:
  """A torch-layout state dict for ``name`` built from its Flax tree (inverse mapping)."""
  (_, _), variables = _abstract(name, num_classes)
  rng = np.random.default_rng(0)
  sd = {}
  for col, tree in variables.items():
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
      keys = [p.key for p in path]
      mod = '.'.join(k.replace('_', '.') if k.split('_')[-1].isdigit() else k for k in keys[:-1])
      shape = leaf.shape
      if keys[-1] == 'kernel':
        shape = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape[::-1]
      torch_leaf = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean',
                    'var': 'running_var'}[keys[-1]]
      sd[f'{mod}.{torch_leaf}'] = rng.normal(size=shape).astype(np.float32)
  return sd


def test_converter_roundtrip_and_num_batches_tracked_dropped():
  sd = _random_state_dict('resnet8')
  sd['bn1.num_batches_tracked'] = np.array(3, np.int32)
  _, variables = convert_state_dict('resnet8', sd, num_classes=10)
  np.testing.assert_array_equal(variables['params']['conv1']['kernel'],
                                sd['conv1.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(variables['params']['fc']['kernel'], sd['fc.weight'].T)
  np.testing.assert_array_equal(variables['batch_stats']['layer1_0']['bn2']['var'],
                                sd['layer1.0.bn2.running_var'])


def test_converter_reports_missing_unexpected_and_misshaped():
  sd = _random_state_dict('resnet8')
  del sd['layer2.0.conv1.weight']
  sd['extra.weight'] = np.zeros(3, np.float32)
  sd['fc.weight'] = np.zeros((100, 64), np.float32)  # a 100-class head into a 10-class model
  with pytest.raises(CheckpointMismatchError) as err:
    convert_state_dict('resnet8', sd, num_classes=10)
  msg = str(err.value)
  assert '1 missing key(s): layer2_0/conv1/kernel (params)' in msg
  assert '1 unexpected key(s): extra.weight' in msg
  assert '1 mis-shaped key(s): fc.weight (expected (10, 64), got (100, 64))' in msg
  assert '\n' not in msg  # one line: the CLI prints it as `kdjax: error: ...`


def test_converter_message_is_truncated():
  sd = {k: v for k, v in _random_state_dict('resnet8').items() if not k.startswith('layer')}
  with pytest.raises(CheckpointMismatchError, match=r'missing key\(s\): .*\(\+\d+ more\)') as err:
    convert_state_dict('resnet8', sd, num_classes=10)
  assert len(err.value.missing) > 5
  assert len(str(err.value)) < 1000


def test_wrong_layer_kind_is_unexpected():
  # A BN-only leaf name on a conv must not be accepted just because the path exists.
  sd = _random_state_dict('resnet8')
  sd['conv1.running_mean'] = np.zeros(16, np.float32)
  with pytest.raises(CheckpointMismatchError, match='unexpected key.*conv1.running_mean'):
    convert_state_dict('resnet8', sd, num_classes=10)


@pytest.mark.parametrize('transpose_kernel', [True, False])
def test_conv_transpose_import_matches_torch_semantics(transpose_kernel):
  """torch ConvTranspose2d(I, O, k, stride s, padding p) written out as a scatter-add."""
  rng = np.random.default_rng(1)
  cin, cout, k, s, p, hw = 3, 5, 4, 2, 1, 4
  x = rng.normal(size=(2, cin, hw, hw)).astype(np.float32)
  w = rng.normal(size=(cin, cout, k, k)).astype(np.float32)
  b = rng.normal(size=(cout,)).astype(np.float32)
  full = np.zeros((2, cout, (hw - 1) * s + k, (hw - 1) * s + k), np.float32)
  for i in range(k):
    for j in range(k):
      full[:, :, i:i + (hw - 1) * s + 1:s, j:j + (hw - 1) * s + 1:s] += np.einsum(
          'nchw,co->nohw', x, w[:, :, i, j])
  out = (hw - 1) * s - 2 * p + k
  ref = full[:, :, p:p + out, p:p + out] + b[None, :, None, None]

  class Up(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.ConvTranspose(cout, (k, k), strides=(s, s), padding=((k - 1 - p, k - 1 - p),) * 2,
                              transpose_kernel=transpose_kernel, name='up')(x)

  xn = x.transpose(0, 2, 3, 1)
  variables = torch_to_flax(Up(), {'up.weight': w, 'up.bias': b}, xn)
  got = np.asarray(Up().apply(variables, xn)).transpose(0, 3, 1, 2)
  np.testing.assert_allclose(got, ref, atol=1e-5)


def test_torch_pooling_conventions():
  ones = jnp.ones((1, 4, 4, 1))
  # count_include_pad (torch default): the corner window divides by 9, not by 4.
  np.testing.assert_allclose(avg_pool(ones, 3, 2, padding=1)[0, 0, 0, 0], 4 / 9, rtol=1e-6)
  # ceil_mode: the overhanging window divides by its in-bounds size.
  pooled = avg_pool(jnp.ones((1, 3, 3, 1)), 2, ceil_mode=True)
  chex.assert_shape(pooled, (1, 2, 2, 1))
  np.testing.assert_allclose(pooled, 1.0)


def test_channel_shuffle_matches_torch_permutation():
  x = jnp.arange(6.0).reshape(1, 1, 1, 6)
  # torch: view(N, g, C/g, ...).permute(0, 2, 1, ...) -> channel order 0,3,1,4,2,5 for g=2
  np.testing.assert_array_equal(channel_shuffle(x, 2).reshape(-1), [0, 3, 1, 4, 2, 5])


def test_generator_shapes_and_range():
  gen = create_generator(nz=16, ngf=8, img_size=32, nc=3)
  z = jax.random.normal(jax.random.key(0), (2, 16))
  variables = gen.init(jax.random.key(1), z, train=False)
  img, _ = gen.apply(variables, z, train=True, mutable=['batch_stats'])
  chex.assert_shape(img, (2, 32, 32, 3))
  assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0


def test_load_torch_file_without_torch_says_how_to_install(monkeypatch, tmp_path):
  import sys  # pylint: disable=import-outside-toplevel
  from kdjax.models import load_torch_file  # pylint: disable=import-outside-toplevel
  monkeypatch.setitem(sys.modules, 'torch', None)  # makes `import torch` fail
  with pytest.raises(ImportError, match=r'pip install kdjax\[torch\]'):
    load_torch_file(str(tmp_path / 'ckpt.pth'))


def _init_params(name: str, num_classes: int = 100):
  model = create_model(name, num_classes)
  return model.init(jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 3)), train=False)['params']


@pytest.mark.parametrize('name,head,weight_std,bias_zero', [
    # RepDistiller's _initialize_weights: normal(0, 0.01), zero bias
    ('vgg8', 'classifier', 0.01, True),
    ('MobileNetV2', 'classifier_0', 0.01, True),
    # WRN: torch's default weight (uniform +-1/sqrt(fan_in)), zero bias
    ('wrn_16_2', 'fc', 1 / np.sqrt(3 * 128), True),
    # CIFAR ResNet, ShuffleNets: torch's default Linear
    ('resnet8', 'fc', 1 / np.sqrt(3 * 64), False),
    ('ShuffleV2', 'linear', 1 / np.sqrt(3 * 1024), False),
])
def test_heads_are_initialised_as_the_reference(name, head, weight_std, bias_zero):
  p = _init_params(name)[head]
  np.testing.assert_allclose(np.asarray(p['kernel']).std(), weight_std, rtol=0.05)
  bias = np.asarray(p['bias'])
  assert np.all(bias == 0) if bias_zero else np.abs(bias).max() > 0


def test_shufflenet_and_generator_convs_use_torch_default_init():
  """RepDistiller's ShuffleNets and Fast-Datafree's generator have no init code: torch's
  default conv init, uniform in +-1/sqrt(fan_in) (He fan-out elsewhere)."""
  k = np.asarray(_init_params('ShuffleV1')['layer1_0']['conv1']['kernel'])  # 1x1, 24 -> 54
  fan_in = int(np.prod(k.shape[:-1]))
  assert np.abs(k).max() <= 1 / np.sqrt(fan_in)
  np.testing.assert_allclose(k.std(), 1 / np.sqrt(3 * fan_in), rtol=0.1)
  gen = create_generator()
  g = gen.init(jax.random.PRNGKey(0), jnp.zeros((2, 100)), train=False)['params']
  k = np.asarray(g['conv_blocks_6']['kernel'])  # 3x3, 128 -> 64
  np.testing.assert_allclose(k.std(), 1 / np.sqrt(3 * 9 * 128), rtol=0.05)
  bias = np.asarray(g['conv_blocks_9']['bias'])  # 3x3, 64 -> 3, torch's default bias
  assert 0 < np.abs(bias).max() <= 1 / np.sqrt(9 * 64)
  # the He fan-out convs of the other models are unchanged
  k = np.asarray(_init_params('resnet8')['conv1']['kernel'])  # 3x3, 3 -> 16
  np.testing.assert_allclose(k.std(), np.sqrt(2 / (9 * 16)), rtol=0.15)
