"""configs/imagenet/: the protocol values, and the configs run at toy size (32x32 crops of a
generated JPEG folder, 2 classes) through the streaming pipeline on 8 simulated devices."""
from __future__ import annotations

import glob
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import methods, models
from kdjax.config import _check_schema, base_config, validate

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                'experiments'))
from common import ROOT, load_config_module  # noqa: E402

CONFIG_DIR = os.path.join(ROOT, 'configs', 'imagenet')
FILES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(CONFIG_DIR, '*.py')))
DISTILL = ('kd', 'crd', 'cid', 'icd')


def _module(name):
  return load_config_module(os.path.join(CONFIG_DIR, f'{name}.py'))


def test_the_four_methods_and_a_teacher_config_exist():
  assert set(FILES) == set(DISTILL) | {'teacher'}


@pytest.mark.parametrize('name', FILES)
def test_imagenet_config_files_follow_the_protocol(name):
  module = _module(name)
  assert set(module.PUBLISHED) <= set(module.ARGS)
  schema = base_config()
  for arg in module.ARGS:
    c = module.get_config(arg)
    _check_schema(c, schema)
    assert c.model.name in models.model_names() and c.method.name in methods.method_names()
    assert c.data.pipeline == 'streaming'
    assert c.model.dtype == ('bfloat16' if arg.endswith('+bf16') else 'float32')
    if arg.startswith('tiny:'):
      assert (c.data.source, c.data.image_size, c.data.crop_padding) == ('tiny_imagenet', 64, 4)
      continue
    assert (c.data.name, c.data.source, c.data.image_size) == ('imagenet2012', 'tfds', 224)
    assert (c.data.train_crop, c.data.eval_crop_fraction, c.data.flip) == (
        'random_resized', 0.875, True)
    assert c.optim.lr == pytest.approx(0.1) and c.train.batch_size == 256
    assert (c.optim.momentum, c.optim.weight_decay) == (0.9, 1e-4)
    assert (c.train.epochs, tuple(c.optim.milestones), c.optim.decay_rate) == (
        100, (30, 60, 90), 0.1)
    if c.mode == 'distill':
      assert c.method.temperature == 4.0 and c.teacher.checkpoint == ''
      assert c.teacher.model in models.model_names()
    c.train.batch_size = 1024  # the learning rate follows the global batch linearly
    assert c.optim.lr == pytest.approx(0.4)
  with pytest.raises(ValueError, match='accepted'):
    module.get_config('no-such-arg')


def test_published_numbers_have_a_source():
  kd, crd = _module('kd'), _module('crd')
  assert kd.PUBLISHED == {'resnet34-resnet18': 70.66, 'resnet50-mobilenetv1': 68.58}
  assert crd.PUBLISHED['resnet34-resnet18'] == 71.17
  for name in DISTILL:
    assert 'PUBLISHED' in _module(name).__doc__


# --- toy-size runs ------------------------------------------------------------------------

def _teacher_export(path, name, num_classes=2, size=32):
  from kdjax.train import export
  model = models.create_model(name, num_classes)
  variables = model.init(jax.random.PRNGKey(3), jnp.zeros((1, size, size, 3)), train=False)
  export.save(path, {'params': variables['params'], 'batch_stats': variables['batch_stats'],
                     'method': {}},
              {'model': name, 'num_classes': num_classes, 'method': 'ce', 'dataset': 'folder',
               'mean': [0.485, 0.456, 0.406], 'std': [0.229, 0.224, 0.225], 'image_size': size})
  return path


def toy(config, root, teacher):
  d = config.data
  d.source, d.name, d.path, d.image_size, d.workers = 'folder', 'folder', str(root), 32, 2
  config.teacher.checkpoint = teacher
  config.train.batch_size = 16
  config.train.eval_batch_size = 16
  config.train.epochs = 1
  config.train.progress = False
  config.method.crd.negatives = 8
  config.method.cid.init_epochs = 1
  return config


@pytest.mark.slow  # ResNet-34 -> ResNet-18 compiles for about a minute on 2 cores
@pytest.mark.parametrize('method', DISTILL)
def test_imagenet_config_trains_at_toy_size_through_the_stream(method, tmp_path):
  from test_streaming import write_image_folder
  from kdjax.train.modes import run as train
  pytest.importorskip(
      'grain', reason="the streaming pipeline needs grain (pip install 'kdjax[streaming]')")
  assert jax.device_count() == 8
  root = write_image_folder(tmp_path / 'data', classes=2, train_per_class=16, val_per_class=5)
  teacher = _teacher_export(str(tmp_path / 'teacher'), 'imagenet_resnet34')
  config = toy(_module(method).get_config('resnet34-resnet18'), root, teacher)
  validate(config)
  summary = train(config, str(tmp_path / 'run'))
  assert summary['model'] == 'imagenet_resnet18' and summary['method'] == method
  assert np.isfinite(summary['test/loss'])
  from kdjax.train import export
  meta = export.read_meta(str(tmp_path / 'run' / 'model'))
  assert meta['image_size'] == 32 and meta['teacher'] == 'imagenet_resnet34'


@pytest.mark.slow
def test_tiny_imagenet_config_trains_at_toy_size(tmp_path):
  """configs/imagenet/teacher.py:tiny:... on a miniature Tiny-ImageNet folder (64x64)."""
  from test_streaming import write_tiny_imagenet
  from kdjax.train.modes import run as train
  pytest.importorskip(
      'grain', reason="the streaming pipeline needs grain (pip install 'kdjax[streaming]')")
  write_tiny_imagenet(tmp_path, train_per_class=8, val_per_class=3)
  c = _module('teacher').get_config('tiny:imagenet_resnet18')
  c.data.path, c.data.workers = str(tmp_path), 2
  c.train.batch_size, c.train.eval_batch_size, c.train.epochs = 16, 8, 1
  c.train.progress = False
  validate(c)
  summary = train(c, str(tmp_path / 'run'))
  assert np.isfinite(summary['test/loss'])
  from kdjax.train import export
  meta = export.read_meta(str(tmp_path / 'run' / 'model'))
  assert (meta['num_classes'], meta['image_size']) == (2, 64)
  assert meta['mean'] == [0.4802, 0.4481, 0.3975]
