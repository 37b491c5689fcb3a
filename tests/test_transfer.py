"""Mode transfer: a new linear head on a frozen backbone (CID / ICD transferability)."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from conftest import tiny_config
from kdjax.config import ConfigError, validate
from kdjax.models import create_model
from kdjax.models.probe import LinearProbe, trainable_mask
from kdjax.train import export, modes
from kdjax.train.checkpoint import CheckpointError
from kdjax.train.state import make_optimizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _probe_config(backbone: str, **overrides):
  defaults = dict(mode='transfer', transfer__checkpoint=backbone, optim__lr=0.1,
                  optim__weight_decay=0.0)
  return tiny_config(**{**defaults, **overrides})


def _digits(**overrides):
  return dict(data__name='digits', data__source='auto', data__flip=False,
              train__batch_size=64, train__eval_batch_size=128, **overrides)


# ---------------------------------------------------------------- the probe and its optimizer


def _variables(model, seed: int = 0):
  """Random variables of ``model`` drawn with numpy from its shapes: ``model.init``'s
  random initialisers compile slowly on CPU, and their values do not matter here."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                             jnp.zeros((1, 32, 32, 3)), train=False))
  return jax.tree_util.tree_map_with_path(
      lambda path, s: (np.ones(s.shape, np.float32) if 'var' in jax.tree_util.keystr(path)
                       else rng.normal(0, 0.1, s.shape).astype(np.float32)), shapes)


def test_probe_passes_no_gradient_and_keeps_batchnorm_statistics():
  """``adapt_bn=False`` (transfer.backbone_bn='frozen'): the backbone's own statistics."""
  probe = LinearProbe(create_model('resnet8', 4), num_classes=7, adapt_bn=False)
  x = np.random.default_rng(1).normal(size=(4, 16, 16, 3)).astype(np.float32)
  variables = _variables(probe)

  def train_forward(params):
    (logits, feats), updates = probe.apply({**variables, 'params': params}, x, train=True,
                                           mutable=['batch_stats'])
    eval_logits, _ = probe.apply({**variables, 'params': params}, x, train=False)
    return jnp.sum(logits ** 2), (logits, feats, updates['batch_stats'], eval_logits)

  grads, (logits, feats, stats, eval_logits) = jax.jit(jax.grad(train_forward, has_aux=True))(
      variables['params'])
  chex.assert_shape(logits, (4, 7))
  chex.assert_type(logits, jnp.float32)
  chex.assert_shape(feats[-1], (4, 64))  # resnet8's pooled feature
  chex.assert_shape(variables['params']['head']['kernel'], (64, 7))
  # train=True still normalises with the backbone's running statistics, and leaves them
  chex.assert_trees_all_equal(stats, variables['batch_stats'])
  chex.assert_trees_all_close(logits, eval_logits, rtol=1e-6, atol=1e-6)
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads['backbone']))
  assert float(jnp.abs(grads['head']['kernel']).max()) > 0


def test_probe_adapts_batchnorm_statistics_but_no_weight():
  """The default protocol (transfer_student.py, methods.md §8): BatchNorm in train mode
  while probing, batch statistics used and running statistics re-estimated; still no
  gradient into the backbone; evaluation uses the adapted running statistics."""
  probe = LinearProbe(create_model('resnet8', 4), num_classes=7, adapt_bn=True)
  x = np.random.default_rng(1).normal(2.0, 3.0, size=(8, 16, 16, 3)).astype(np.float32)
  variables = _variables(probe)

  def train_forward(params):
    (logits, _), updates = probe.apply({**variables, 'params': params}, x, train=True,
                                       mutable=['batch_stats'])
    return jnp.sum(logits ** 2), (logits, updates['batch_stats'])

  grads, (logits, stats) = jax.jit(jax.grad(train_forward, has_aux=True))(variables['params'])
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads['backbone']))
  old_mean = variables['batch_stats']['backbone']['bn1']['mean']
  new_mean = stats['backbone']['bn1']['mean']
  assert float(jnp.abs(new_mean - old_mean).min()) > 0  # every channel re-estimated
  eval_old, _ = probe.apply(variables, x, train=False)
  eval_new, _ = probe.apply({**variables, 'batch_stats': stats}, x, train=False)
  assert float(jnp.abs(eval_new - eval_old).max()) > 1e-5
  assert float(jnp.abs(logits - eval_old).max()) > 1e-5  # batch, not running, statistics


def test_probe_head_is_normal_001_with_zero_bias():
  from kdjax.models.probe import init_variables
  probe = LinearProbe(create_model('resnet20', 4), num_classes=100)
  backbone = {c: v['backbone'] for c, v in _variables(probe).items()}
  head = init_variables(probe, backbone, jax.random.PRNGKey(3),
                        jnp.zeros((1, 32, 32, 3)))['params']['head']
  kernel = np.asarray(head['kernel'])
  assert kernel.shape == (64, 100)
  np.testing.assert_allclose(kernel.std(), 0.01, rtol=0.05)
  assert abs(kernel.mean()) < 1e-3
  np.testing.assert_array_equal(np.asarray(head['bias']), 0.0)


def test_target_normalization_and_low_lr_backbones():
  from kdjax.data.sources import ArrayDataset
  from kdjax.train import transfer
  ds = lambda name: ArrayDataset(np.zeros((1, 32, 32, 3), np.uint8), np.zeros(1, np.int32), 10,
                                 (0.1, 0.2, 0.3), (0.4, 0.5, 0.6), name)
  meta = {'model': 'ShuffleV1', 'num_classes': 100, 'mean': [0.5071, 0.4867, 0.4408],
          'std': [0.2675, 0.2565, 0.2761]}
  target = transfer.Backbone('p', meta, {}, 'adapt', 'target')
  assert transfer.normalization(ds('stl10'), target) == (
      (0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2712))
  assert transfer.normalization(ds('tiny_imagenet'), target) == (
      (0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821))
  assert transfer.normalization(ds('digits'), target) == ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
  own = transfer.Backbone('p', meta, {}, 'adapt', 'backbone')
  assert transfer.normalization(ds('stl10'), own) == (tuple(meta['mean']), tuple(meta['std']))
  config = _config_file('stl10')
  assert transfer.run_config(config, target).optim.lr == 0.01  # ShuffleV1: §1's low lr
  assert transfer.run_config(config, target._replace(meta={**meta, 'model': 'wrn_16_2'})
                             ).optim.lr == 0.05


def test_optimizer_mask_freezes_leaves_bitwise():
  rng = np.random.default_rng(0)
  params = {'student': {'backbone': {'w': rng.normal(size=(3, 2)).astype(np.float32),
                                     'b': rng.normal(size=2).astype(np.float32)},
                        'head': {'w': rng.normal(size=(2, 5)).astype(np.float32)}},
            'method': {}}
  mask = {'student': trainable_mask(params['student']), 'method': {}}
  assert mask['student'] == {'backbone': {'w': False, 'b': False}, 'head': {'w': True}}
  optim = ml_collections.ConfigDict(dict(lr=0.1, momentum=0.9, nesterov=False,
                                         weight_decay=0.5))
  tx = make_optimizer(optim, optax.constant_schedule(0.1),
                      jax.tree.map(lambda _: True, params), trainable=mask)
  opt_state = tx.init(params)
  # no momentum buffers for frozen leaves: only the head's (2, 5) trace
  buffers = [x for x in jax.tree.leaves(opt_state) if np.ndim(x) > 0]
  assert [np.shape(b) for b in buffers] == [(2, 5)], [np.shape(b) for b in buffers]
  new = params
  for _ in range(3):
    grads = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
    updates, opt_state = tx.update(grads, opt_state, new)
    new = optax.apply_updates(new, updates)
  chex.assert_trees_all_equal(new['student']['backbone'], params['student']['backbone'])
  assert np.abs(np.asarray(new['student']['head']['w']) - params['student']['head']['w']).min() > 0


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope='module')
def digits_backbone(tmp_path_factory) -> str:
  """A resnet8 trained briefly on part of the digits (about 70% test accuracy)."""
  workdir = str(tmp_path_factory.mktemp('digits_backbone'))
  modes.run(tiny_config(train__epochs=5, data__train_examples=640, optim__lr=0.1,
                         train__eval_every=5, checkpoint__every=5, **_digits()), workdir)
  return workdir


@pytest.mark.slow
def test_probe_learns_digits_on_a_frozen_backbone(digits_backbone, tmp_path):
  workdir = str(tmp_path / 'probe')
  config = _probe_config(digits_backbone, train__epochs=2, **_digits())
  validate(config)
  summary = modes.run(config, workdir)
  assert summary['last_accuracy'] > 0.6, summary  # 10 balanced classes: chance is 10%
  meta, variables = export.load(workdir)
  _, backbone = export.load(digits_backbone)
  chex.assert_trees_all_equal(variables['params']['backbone'], backbone['params'])
  # backbone_bn='adapt' (default): the running statistics were re-estimated, the weights not
  moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()),
                       variables['batch_stats']['backbone'], backbone['batch_stats'])
  assert min(jax.tree.leaves(moved)) > 0
  assert meta['transfer']['backbone_bn'] == 'adapt'
  chex.assert_shape(variables['params']['head']['kernel'], (64, 10))
  assert meta['model'] == 'resnet8' and meta['num_classes'] == 10
  assert meta['transfer']['backbone'] == export.resolve(digits_backbone)
  # mode=evaluate rebuilds the probe from the export and finds the same number
  evaluate = tiny_config(mode='evaluate', evaluate__checkpoint=workdir, **_digits())
  validate(evaluate)
  result = modes.evaluate(evaluate)
  assert result['examples'] == 359
  assert abs(result['accuracy/student'] - summary['last_accuracy']) < 1e-6


@pytest.mark.slow
def test_probe_of_another_backbone_is_another_experiment(digits_backbone, tmp_path):
  """Fake data with 7 classes; resuming the workdir with another backbone is refused."""
  workdir = str(tmp_path / 'probe')
  summary = modes.run(_probe_config(digits_backbone, data__fake_classes=7, train__epochs=2),
                       workdir)
  assert summary['last_accuracy'] > 0.4, summary  # chance is 1/7
  meta, variables = export.load(workdir)
  backbone_meta, backbone = export.load(digits_backbone)
  assert meta['num_classes'] == 7 and meta['transfer']['backbone_num_classes'] == 10
  chex.assert_trees_all_equal(variables['params']['backbone'], backbone['params'])
  # the target's normalisation (the fake data's constants), not the backbone's (digits)
  assert meta['mean'] == [0.5] * 3 and meta['mean'] != backbone_meta['mean']
  other = str(tmp_path / 'same_weights_elsewhere')
  shutil.copytree(export.resolve(digits_backbone), other)
  with pytest.raises(CheckpointError, match='another experiment \\(backbone'):
    modes.run(_probe_config(other, data__fake_classes=7, train__epochs=3), workdir)


def _config_file(arg: str) -> ml_collections.ConfigDict:
  spec = importlib.util.spec_from_file_location('transfer_config',
                                                os.path.join(REPO, 'configs', 'transfer.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def test_config_file_targets_validate(tmp_path):
  backbone = _export(tmp_path / 'backbone')
  for arg, name in (('stl10', 'stl10'), ('cifar10', 'cifar10'), ('digits', 'digits')):
    config = _config_file(arg)
    config.transfer.checkpoint = backbone
    validate(config)  # tfds names are checked against the catalog, nothing is downloaded
    assert config.mode == 'transfer' and config.data.name == name
    # transfer_student.py's recipe (methods.md §8)
    assert (config.optim.lr, config.optim.weight_decay, config.optim.momentum) == (0.05, 5e-4, 0.9)
    assert tuple(config.optim.milestones) == (30, 60, 90) and config.train.epochs == 120
    assert (config.train.batch_size, config.transfer.low_lr) == (64, 0.01)
    assert (config.transfer.backbone_bn, config.transfer.normalization) == ('adapt', 'target')


@pytest.mark.slow
def test_config_file_runs_on_stl10(digits_backbone, tmp_path):
  """The default target, tfds STL-10 (mocked: 96x96 random images), resized to 32x32."""
  import tensorflow_datasets as tfds
  config = _config_file('stl10')
  config.transfer.checkpoint = digits_backbone
  config.train.epochs = 1
  config.train.batch_size = 8
  config.train.eval_batch_size = 8
  config.train.progress = False
  with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE):
    validate(config)
    summary = modes.run(config, str(tmp_path))
  meta = export.read_meta(str(tmp_path))
  assert (meta['dataset'], meta['num_classes'], meta['image_size']) == ('stl10', 10, 32)
  # STL-10's published statistics (methods.md §8), not the backbone's or the mock data's
  assert (meta['mean'], meta['std']) == ([0.4467, 0.4398, 0.4066], [0.2603, 0.2566, 0.2712])
  # 16 mock test images: the accuracy is a count out of 16
  assert summary['last_accuracy'] * 16 == pytest.approx(round(summary['last_accuracy'] * 16))


# ---------------------------------------------------------------- bad inputs


def _export(path, meta_extra=None, num_classes=4):
  meta = {'model': 'resnet8', 'num_classes': num_classes, **(meta_extra or {})}
  v = _variables(export.model_from_meta(meta))
  export.save(str(path), {'params': v['params'], 'batch_stats': v['batch_stats'], 'method': {}},
              meta)
  return str(path)


def _one_line_error(config, match):
  with pytest.raises(ConfigError, match=match) as e:
    validate(config)
  assert '\n' not in str(e.value)


def test_transfer_needs_a_checkpoint():
  _one_line_error(tiny_config(mode='transfer'),
                  "mode 'transfer' needs --config.transfer.checkpoint=PATH")


def test_transfer_checkpoint_must_exist(tmp_path):
  _one_line_error(_probe_config(str(tmp_path / 'nothere')),
                  r"'transfer.checkpoint': .*nothere does not exist")


def test_transfer_checkpoint_must_hold_a_model(tmp_path):
  _one_line_error(_probe_config(str(tmp_path)), "'transfer.checkpoint': .* holds no kdjax model")


def test_transfer_checkpoint_without_its_variables(tmp_path):
  path = _export(tmp_path / 'b')
  shutil.rmtree(os.path.join(path, export.VARIABLES_DIR))
  _one_line_error(_probe_config(path), "'transfer.checkpoint': .*variables")


def test_transfer_checkpoint_is_not_a_probe(tmp_path):
  path = _export(tmp_path / 'probe', {'transfer': {'backbone': 'x', 'backbone_num_classes': 3}})
  validate(tiny_config(mode='evaluate', evaluate__checkpoint=path))  # a valid export...
  _one_line_error(_probe_config(path), 'is itself a linear probe')  # ...but not a backbone


def test_transfer_image_size_must_match_the_backbone(tmp_path):
  path = _export(tmp_path / 'b', {'image_size': 28})
  _one_line_error(_probe_config(path),
                  r"'data.image_size' is 32 .* use --config.data.image_size=28")


def test_cli_reports_a_missing_backbone_in_one_line(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  result = subprocess.run(
      [sys.executable, '-m', 'kdjax.main', '--config', 'configs/transfer.py:digits',
       '--workdir', str(tmp_path / 'run'), f'--config.transfer.checkpoint={tmp_path}/nope'],
      capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
  assert result.returncode == 2, result.stderr
  errors = [line for line in result.stderr.splitlines() if line.startswith('kdjax: error:')]
  assert len(errors) == 1 and 'nope does not exist' in errors[0], result.stderr
  assert 'Traceback' not in result.stderr
  assert not os.path.exists(tmp_path / 'run')  # refused before any work


def test_evaluate_prints_the_exports_own_name(tmp_path, capsys):
  """A teacher (or any export not distilled) is not called 'student' by evaluate."""
  teacher = _export(tmp_path / 'teacher', {'method': 'ce', 'mean': [0.5] * 3, 'std': [0.25] * 3})
  config = tiny_config(mode='evaluate', evaluate__checkpoint=teacher)
  validate(config)
  result = modes.evaluate(config)
  out = capsys.readouterr().out.strip().splitlines()[-1]
  assert out.startswith('kdjax: resnet8 on fake/test') and ': resnet8 ' in out, out
  assert 'student' not in out, out
  assert 'accuracy/student' in result  # the result's keys are the eval heads'
