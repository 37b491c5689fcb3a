"""Bad configs fail before any compute, with one line naming the key and the fix."""
from __future__ import annotations

import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from conftest import tiny_config
from kdjax.config import ConfigError, validate
from kdjax.models import create_model
from kdjax.train import export

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _export(path, model_name, num_classes=4, meta_model=None):
  model = create_model(model_name, num_classes)
  v = model.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.float32))
  export.save(str(path), {'params': v['params'], 'batch_stats': v['batch_stats'], 'method': {}},
              {'model': meta_model or model_name, 'num_classes': num_classes})
  return str(path)


def _set(config, key, value):
  """A copy of ``config`` with ``key`` set, bypassing ConfigDict's own type safety (as a
  config file built from a plain dict would)."""
  config = ml_collections.ConfigDict(config.to_dict(), type_safe=False)
  *groups, name = key.split('.')
  node = config
  for g in groups:
    node = node[g]
  node[name] = value
  return config


CASES = [
    # (key, value, message fragment)
    ('train.epoch', 3, "unknown config key 'train.epoch'; did you mean 'train.epochs'?"),
    ('nonsense', 1, "unknown config key 'nonsense'"),
    ('train.epochs', 'ten', "config key 'train.epochs' must be int, got str 'ten'"),
    ('optim.nesterov', 1, "config key 'optim.nesterov' must be bool, got int"),
    ('model.name', 'resnet9', "config key 'model.name' is 'resnet9'; accepted: MobileNetV2"),
    ('method.name', 'kdd', "config key 'method.name' is 'kdd'; accepted:"),
    ('mode', 'fit', "config key 'mode' is 'fit'; accepted: train, distill, evaluate, pipeline"),
    ('model.dtype', 'float16', "config key 'model.dtype' is 'float16'; accepted: float32, bfloat16"),
    ('optim.schedule', 'step', "config key 'optim.schedule' is 'step'"),
    ('train.batch_size', 12, "'train.batch_size' = 12 is not divisible by the 8 devices"),
    ('train.epochs', 0, "config key 'train.epochs' must be > 0"),
    ('optim.milestones', (180, 150), "'optim.milestones' must be increasing"),
    ('data.source', 'ftp', 'ftp'),
    ('data.name', 'no_such_dataset_xyz', 'no_such_dataset_xyz'),
]


@pytest.mark.parametrize('key,value,message', CASES, ids=[c[0] + '=' + str(c[1]) for c in CASES])
def test_bad_value_is_reported(key, value, message):
  config = tiny_config(data__source='auto') if key == 'data.name' else tiny_config()
  config = _set(config, key, value)
  with pytest.raises(ConfigError) as e:
    validate(config)
  assert message in str(e.value)
  assert '\n' not in str(e.value)


def test_archive_path_must_exist(tmp_path):
  config = tiny_config(data__name='cifar100', data__source='archive',
                       data__path=str(tmp_path / 'missing'))
  with pytest.raises(ConfigError, match='missing'):
    validate(config)


def test_distill_needs_a_teacher():
  with pytest.raises(ConfigError, match="method 'kd' needs a teacher: set --config.teacher.checkpoint"):
    validate(tiny_config(mode='distill'))


def test_missing_teacher_checkpoint(tmp_path):
  with pytest.raises(ConfigError, match=r"'teacher.checkpoint': .*nothere does not exist"):
    validate(tiny_config(mode='distill', teacher__checkpoint=str(tmp_path / 'nothere')))


def test_directory_without_a_model(tmp_path):
  with pytest.raises(ConfigError, match='holds no kdjax model'):
    validate(tiny_config(mode='distill', teacher__checkpoint=str(tmp_path)))


def test_teacher_of_another_model_name(tmp_path):
  path = _export(tmp_path / 't', 'resnet8')
  with pytest.raises(ConfigError, match='holds a resnet8, not a resnet20'):
    validate(tiny_config(mode='distill', teacher__checkpoint=path, teacher__model='resnet20'))


def test_teacher_whose_weights_do_not_fit(tmp_path):
  path = _export(tmp_path / 't', 'resnet8', meta_model='resnet14')  # weights of another net
  with pytest.raises(ConfigError, match=r'do not fit resnet14 with 4 classes: \d+ missing'):
    validate(tiny_config(mode='distill', teacher__checkpoint=path))


def test_teacher_with_another_class_count_is_refused_by_validate(tmp_path):
  path = _export(tmp_path / 't', 'resnet8', num_classes=10)
  with pytest.raises(ConfigError, match='teacher predicts 10 classes but fake has 4'):
    validate(tiny_config(mode='distill', teacher__checkpoint=path))


def test_teacher_class_count_is_still_checked_where_the_data_size_is_unknown(
    tmp_path, monkeypatch):
  """A dataset validate cannot size (tfds, streamed) meets the same check at load time."""
  from kdjax import config as config_module
  from kdjax.train.modes import run
  monkeypatch.setattr(config_module, '_known_train_size', lambda c: None)
  path = _export(tmp_path / 't', 'resnet8', num_classes=10)
  config = tiny_config(mode='distill', teacher__checkpoint=path)
  validate(config)  # shapes are consistent with its own metadata
  with pytest.raises(ConfigError, match='teacher predicts 10 classes but fake has 4'):
    run(config, str(tmp_path / 'run'))


@pytest.mark.parametrize('name,examples,batch', [('fake', 0, 512), ('fake', 100, 128),
                                                  ('digits', 0, 2048), ('cifar100', 0, 50048)])
def test_batch_larger_than_the_training_set_is_refused_by_validate(name, examples, batch):
  config = tiny_config(data__name=name, data__source='auto' if name != 'fake' else 'fake',
                       data__train_examples=examples, train__batch_size=batch)
  with pytest.raises(ConfigError, match=r"'train.batch_size' = \d+ is larger than the"):
    validate(config)


def test_good_config_passes(tmp_path):
  validate(tiny_config())
  validate(tiny_config(mode='distill', teacher__checkpoint=_export(tmp_path / 't', 'resnet8')))


def _cli(*args):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-m', 'kdjax.main', *args], capture_output=True,
                        text=True, cwd=REPO, env=env, timeout=300)


@pytest.mark.parametrize('args,message', [
    (['--config.train.epoch=3'], "unknown config key 'epoch' in a --config override; did you mean 'epochs'?"),
    (['--config.train.epochs=abc'], "invalid literal for int() with base 10: 'abc'"),
    (['--config.model.name=resnet9'], "config key 'model.name' is 'resnet9'; accepted:"),
])
def test_cli_reports_one_line_without_traceback(args, message, tmp_path):
  result = _cli('--config', 'configs/default.py:smoke', '--workdir', str(tmp_path), *args)
  assert result.returncode == 2, result.stderr
  errors = [l for l in result.stderr.splitlines() if l.startswith('kdjax: error:')]
  assert len(errors) == 1 and message in errors[0], result.stderr
  assert 'Traceback' not in result.stderr


def test_cli_missing_config_file(tmp_path):
  result = _cli('--config', 'configs/nope.py', '--workdir', str(tmp_path))
  assert result.returncode == 2
  assert 'kdjax: error: cannot load the --config file' in result.stderr
  assert 'Traceback' not in result.stderr


def test_cli_help_lists_modes():
  result = _cli('--help')
  assert result.returncode == 0
  for word in ('train', 'distill', 'evaluate', 'pipeline', '--workdir'):
    assert word in result.stdout
