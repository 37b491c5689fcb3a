"""The catalogue of bad inputs: each goes through the real CLI entry (kdjax.main's
``app.run(main, _parse_flags)``, as ``python -m kdjax.main`` runs it) and must end in one
``kdjax: error:`` line with the given text, exit code 2 and no traceback — before any
training step is compiled.

The cases run in forks of one process that imported kdjax once (``cli_batch.py``), so the
catalogue costs one JAX import rather than one per case.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile

import jax
import numpy as np
import pytest

from kdjax.models import create_model
from kdjax.train import export
from kdjax.train.checkpoint import Checkpoints

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A tiny train run on the fake source; cases append overrides (the last value of a key wins).
FAKE = ['--config', 'configs/default.py', '--workdir', '{tmp}/run', '--config.mode=train',
        '--config.data.name=fake', '--config.data.source=fake', '--config.model.name=resnet8',
        '--config.train.epochs=1', '--config.train.batch_size=32',
        '--config.train.progress=False']
DISTILL = FAKE + ['--config.mode=distill', '--config.method.name=kd']

_CONFIG_FILES = {
    'top_level_key.py': 'c.learning_rate = 0.1',
    'nested_key.py': 'c.train.epoch = 3',
    'wrong_type.py': "c.train.update({'epochs': 'ten'})",
    'raises.py': "raise RuntimeError('no GPU quota left')",
}


@pytest.fixture(scope='module')
def assets(tmp_path_factory) -> dict[str, str]:
  """Files the cases point at: config files, damaged archives, exports, a used workdir."""
  root = tmp_path_factory.mktemp('bad_inputs')
  for name, line in _CONFIG_FILES.items():
    # a config built as users do, then mutated without ConfigDict's type safety
    (root / name).write_text(
        'import ml_collections\nfrom kdjax.config import base_config\n\n\n'
        'def get_config():\n'
        '  c = ml_collections.ConfigDict(base_config().to_dict(), type_safe=False)\n'
        "  c.mode = 'train'\n"
        f'  {line}\n'
        '  return c\n')
  (root / 'garbage.tar.gz').write_bytes(b'this is not an archive at all' * 10)
  with tarfile.open(root / 'other.tar.gz', 'w:gz') as tar:
    data = b'hello'
    info = tarfile.TarInfo('readme.txt')
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
  _export(root / 'teacher4', 'resnet8', 4)
  _export(root / 'teacher10', 'resnet8', 10)
  # a workdir holding a checkpoint of another experiment (only its meta is read)
  ckpts = Checkpoints(str(root / 'used'), 2)
  fingerprint = {'mode': 'train', 'model': 'resnet20', 'method': 'ce', 'data': 'fake',
                 'batch_size': 32, 'seed': 0, 'devices': 1}
  ckpts.save(8, {'x': np.zeros(3, np.float32)}, {'fingerprint': fingerprint}, wait=True)
  ckpts.close()
  return {'tmp': str(root)}


def _export(path, model_name: str, num_classes: int) -> None:
  model = create_model(model_name, num_classes)
  v = model.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.float32))
  export.save(str(path), {'params': v['params'], 'batch_stats': v['batch_stats'], 'method': {}},
              {'model': model_name, 'num_classes': num_classes})


# (id, argv with {tmp} placeholders, distinctive text of the error line, extra env)
CASES = [
    # flags and config files
    ('missing_config', ['--workdir', '{tmp}/run'], '--config is required'),
    ('missing_workdir', FAKE[:2] + FAKE[4:], '--workdir is required'),
    ('nonexistent_config_file', ['--config', '{tmp}/nope.py', '--workdir', '{tmp}/run'],
     "cannot load the --config file: [Errno 2] No such file or directory"),
    ('config_file_raises', ['--config', '{tmp}/raises.py', '--workdir', '{tmp}/run'],
     'no GPU quota left'),
    ('config_argument_unknown', ['--config', 'configs/default.py:fast', '--workdir', '{tmp}/run'],
     "unknown config argument 'fast'"),
    ('positional_argument', FAKE + ['extra'], "unexpected arguments ['extra']"),
    # unknown keys and wrong types
    ('unknown_top_level_key', ['--config', '{tmp}/top_level_key.py', '--workdir', '{tmp}/run'],
     "unknown config key 'learning_rate'"),
    ('unknown_nested_key', ['--config', '{tmp}/nested_key.py', '--workdir', '{tmp}/run'],
     "unknown config key 'train.epoch'; did you mean 'train.epochs'?"),
    ('unknown_override_key', FAKE + ['--config.optim.momentun=0.5'],
     "unknown config key 'momentun' in a --config override; did you mean 'momentum'?"),
    ('wrong_type_in_file', ['--config', '{tmp}/wrong_type.py', '--workdir', '{tmp}/run'],
     "config key 'train.epochs' must be int, got str 'ten'"),
    ('wrong_type_override', FAKE + ['--config.train.epochs=abc'],
     "invalid literal for int() with base 10: 'abc'"),
    # names
    ('unknown_model', FAKE + ['--config.model.name=resnet9'],
     "config key 'model.name' is 'resnet9'; accepted: MobileNetV2"),
    ('unknown_method', DISTILL + ['--config.method.name=kdd'],
     "config key 'method.name' is 'kdd'; accepted:"),
    ('unknown_dataset', FAKE + ['--config.data.name=cifar1000', '--config.data.source=auto'],
     "unknown dataset 'cifar1000'"),
    ('unknown_source', FAKE + ['--config.data.source=ftp'], "unknown data source 'ftp'"),
    ('unknown_mode', FAKE + ['--config.mode=finetune'], "config key 'mode' is 'finetune'"),
    # data
    ('missing_dataset_path', FAKE + ['--config.data.name=cifar100', '--config.data.source=archive',
                                     '--config.data.path={tmp}/no_cifar.tar.gz'],
     "no_cifar.tar.gz' does not exist"),
    ('corrupt_archive', FAKE + ['--config.data.name=cifar100', '--config.data.source=archive',
                                '--config.data.path={tmp}/garbage.tar.gz'],
     'is not a readable tar archive'),
    ('archive_of_something_else', FAKE + ['--config.data.name=cifar100',
                                          '--config.data.source=archive',
                                          '--config.data.path={tmp}/other.tar.gz'],
     'lacks train; expected the official cifar-100-python.tar.gz'),
    ('batch_larger_than_dataset', FAKE + ['--config.data.fake_examples=16'],
     "'train.batch_size' = 32 is larger than the 16 training examples"),
    ('subset_larger_than_dataset', FAKE + ['--config.data.train_examples=5000'],
     'asked for 5000 examples of fake, which has 512'),
    ('batch_not_divisible_by_devices', FAKE + ['--config.train.batch_size=12'],
     "'train.batch_size' = 12 is not divisible by the 8 devices; use a multiple of 8",
     {'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}),
    # numbers out of range
    ('zero_epochs', FAKE + ['--config.train.epochs=0'], "config key 'train.epochs' must be > 0"),
    ('negative_epochs', FAKE + ['--config.train.epochs=-3'],
     "config key 'train.epochs' must be > 0, got -3"),
    ('milestones_not_increasing', FAKE + ['--config.optim.milestones=(180,150)'],
     "'optim.milestones' must be increasing epochs"),
    ('zero_image_size', FAKE + ['--config.data.image_size=0'],
     "config key 'data.image_size' must be > 0"),
    ('negative_crop_padding', FAKE + ['--config.data.crop_padding=-1'],
     "config key 'data.crop_padding' must be >= 0"),
    ('momentum_one', FAKE + ['--config.optim.momentum=1.0'],
     "config key 'optim.momentum' must be in [0, 1)"),
    ('negative_weight_decay', FAKE + ['--config.optim.weight_decay=-0.0005'],
     "config key 'optim.weight_decay' must be >= 0"),
    # teachers, evaluation, workdirs
    ('distill_without_teacher', DISTILL, "method 'kd' needs a teacher"),
    ('teacher_missing', DISTILL + ['--config.teacher.checkpoint={tmp}/no_teacher'],
     "config key 'teacher.checkpoint': {tmp}/no_teacher does not exist"),
    ('teacher_other_architecture', DISTILL + ['--config.teacher.checkpoint={tmp}/teacher4',
                                              '--config.teacher.model=resnet56'],
     'holds a resnet8, not a resnet56'),
    ('teacher_other_class_count', DISTILL + ['--config.teacher.checkpoint={tmp}/teacher10',
                                             '--config.data.fake_classes=4'],
     'the teacher predicts 10 classes but fake has 4'),
    ('evaluate_without_checkpoint', FAKE + ['--config.mode=evaluate'],
     "mode 'evaluate' needs --config.evaluate.checkpoint"),
    ('evaluate_not_a_model', FAKE + ['--config.mode=evaluate',
                                     '--config.evaluate.checkpoint={tmp}'],
     'holds no kdjax model'),
    ('workdir_of_another_experiment', FAKE[:2] + ['--workdir', '{tmp}/used'] + FAKE[4:],
     'holds checkpoints of another experiment (model'),
]


@pytest.fixture(scope='module')
def results(assets) -> dict[str, dict]:
  """Every case's CLI run, all through one ``tests/cli_batch.py`` process (one import)."""
  cases = [{'argv': [a.format(**assets) for a in c[1]], 'env': c[3] if len(c) > 3 else {}}
           for c in CASES]
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='',
             PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get('PYTHONPATH')])))
  batch = subprocess.run([sys.executable, os.path.join(REPO, 'tests', 'cli_batch.py')],
                         input=json.dumps(cases), capture_output=True, text=True, cwd=REPO,
                         env=env, timeout=600)
  assert batch.returncode == 0, batch.stderr
  return {c[0]: r for c, r in zip(CASES, json.loads(batch.stdout))}


@pytest.mark.slow  # the shared fixture: ~45 s of CPU for the whole catalogue
@pytest.mark.parametrize('name,message', [pytest.param(c[0], c[2], id=c[0]) for c in CASES])
def test_bad_input_is_one_clear_line(name, message, results, assets):
  result = results[name]
  assert 'Traceback' not in result['stderr'], result['stderr']
  errors = [line for line in result['stderr'].splitlines() if line.startswith('kdjax: error: ')]
  assert len(errors) == 1, result['stderr']
  assert message.format(**assets) in errors[0], errors[0]
  assert result['returncode'] == 2, result['stderr']
  assert 'epoch 1/' not in result['stdout']  # stopped before training


def test_catalogue_is_complete():
  assert len(CASES) >= 25
  assert len({c[0] for c in CASES}) == len(CASES)
