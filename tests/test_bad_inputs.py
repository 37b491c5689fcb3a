"""The catalogue of bad inputs: each goes through the real CLI entry (kdjax.main's
``app.run(main, _parse_flags)``, as ``python -m kdjax.main`` runs it) and must end in one
``kdjax: error:`` line with the given text, exit code 2 and no traceback — before any
training step is compiled.

The cases run in forks of one process that imported kdjax once (``cli_batch.py``), so the
catalogue costs one JAX import rather than one per case.
"""
from __future__ import annotations

import glob
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import tarfile

import jax
import numpy as np
import pytest

from kdjax.models import create_model
from kdjax.train import export
from kdjax.train.checkpoint import Checkpoints
from kdjax.train.workdir import hold

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A tiny train run on the fake source; cases append overrides (the last value of a key wins).
FAKE = ['--config', 'configs/default.py', '--workdir', '{tmp}/run', '--config.mode=train',
        '--config.data.name=fake', '--config.data.source=fake', '--config.model.name=resnet8',
        '--config.train.epochs=1', '--config.train.batch_size=32',
        '--config.train.progress=False']
DISTILL = FAKE + ['--config.mode=distill', '--config.method.name=kd']
# a teacher that fits FAKE's data (10 fake classes, 32x32)
TAUGHT = DISTILL + ['--config.teacher.checkpoint={tmp}/teacher_fake']
CONVERT = ['@kdjax.convert', '--torch_checkpoint', '{tmp}/a_file', '--model', 'resnet8',
           '--num_classes', '10', '--out', '{tmp}/converted']
# the checkpoint fingerprint of a FAKE run
FAKE_FINGERPRINT = {'mode': 'train', 'model': 'resnet8', 'method': 'ce', 'data': 'fake',
                    'batch_size': 32, 'seed': 0, 'devices': 1, 'drop_last': False}

_CONFIG_FILES = {
    'top_level_key.py': 'c.learning_rate = 0.1',
    'nested_key.py': 'c.train.epoch = 3',
    'wrong_type.py': "c.train.update({'epochs': 'ten'})",
    'raises.py': "raise RuntimeError('no GPU quota left')",
}
# config files that do not give a ConfigDict
_ODD_CONFIG_FILES = {
    'returns_dict.py': "def get_config():\n  return {'mode': 'train'}\n",
    'returns_none.py': 'def get_config():\n  pass\n',
    'no_get_config.py': 'CONFIG = None\n',
}


class _Evil:
  """Unpickling this runs a shell command: the marker file must never appear."""

  def __init__(self, marker: str):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f'touch {self.marker}',)


def _cifar100(folder, train_batch: dict) -> None:
  """An official-layout cifar-100-python/ folder whose train (and test) pickle is ``train_batch``."""
  os.makedirs(folder / 'cifar-100-python')
  for f in ('train', 'test'):
    (folder / 'cifar-100-python' / f).write_bytes(pickle.dumps(train_batch, protocol=2))
  (folder / 'cifar-100-python' / 'meta').write_bytes(pickle.dumps({b'fine_label_names': []}))


def _largest_file(export_dir) -> str:
  files = [f for f in glob.glob(os.path.join(export_dir, 'variables', '**', '*'), recursive=True)
           if os.path.isfile(f)]
  return max(files, key=os.path.getsize)


def _damaged_exports(root) -> None:
  """Copies of teacher_fake, each broken in one way."""
  good = root / 'teacher_fake'
  meta = json.loads((good / export.META_FILE).read_text())
  metas = {'meta_unknown_model': {**meta, 'model': 'resnet9'},
           'meta_missing_key': {k: v for k, v in meta.items() if k != 'num_classes'},
           'meta_wrong_type': {**meta, 'num_classes': '10'},
           'meta_zero_std': {**meta, 'std': [0.25, 0.0, 0.25]}}
  for name in list(metas) + ['meta_not_json', 'variables_truncated', 'variables_missing',
                             'variables_flipped']:
    shutil.copytree(good, root / name)
  for name, m in metas.items():
    (root / name / export.META_FILE).write_text(json.dumps(m))
  (root / 'meta_not_json' / export.META_FILE).write_text('{"model": "resnet8", num_classes')
  shutil.rmtree(root / 'variables_missing' / 'variables')
  path = _largest_file(root / 'variables_truncated')
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)
  path = _largest_file(root / 'variables_flipped')
  data = bytearray(open(path, 'rb').read())
  mid = len(data) // 2
  data[mid:mid + 8] = bytes(b ^ 0xFF for b in data[mid:mid + 8])
  open(path, 'wb').write(bytes(data))


def _resumable_workdir(path, config_record: dict, step: int) -> None:
  """A workdir whose checkpoint (of a FAKE run; only its meta is read) was written with
  ``config_record`` (the keys that differ from the FAKE command line)."""
  ckpts = Checkpoints(str(path), 2, print)
  ckpts.save(step, {'x': np.zeros(3, np.float32)},
             {'fingerprint': FAKE_FINGERPRINT, 'config': config_record}, wait=True)
  ckpts.close()


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
  for name, text in _ODD_CONFIG_FILES.items():
    (root / name).write_text(text)
  (root / 'a_file').write_text('not a directory')
  (root / 'locked').mkdir()
  (root / 'user_folder').mkdir()
  (root / 'user_folder' / 'notes.txt').write_text('my notes')
  _cifar100(root / 'evil', {b'data': _Evil(str(root / 'PWNED')), b'fine_labels': [0]})
  _cifar100(root / 'bad_labels', {b'data': np.zeros((2, 3072), np.uint8),
                                  b'fine_labels': ['cat', 'dog']})
  _cifar100(root / 'bad_pixels', {b'data': np.full((2, 3072), 300, np.int16),
                                  b'fine_labels': [0, 1]})
  _export(root / 'teacher_fake', 'resnet8', 10, dataset='fake', image_size=32)
  _damaged_exports(root)
  _resumable_workdir(root / 'resume_lr', {'optim.lr': 0.01}, 16)
  _resumable_workdir(root / 'resume_subset', {'data.train_examples': 100}, 16)
  _resumable_workdir(root / 'resume_epochs', {'train.epochs': 5}, 80)
  (root / 'garbage.tar.gz').write_bytes(b'this is not an archive at all' * 10)
  with tarfile.open(root / 'other.tar.gz', 'w:gz') as tar:
    data = b'hello'
    info = tarfile.TarInfo('readme.txt')
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
  _export(root / 'teacher4', 'resnet8', 4)
  _export(root / 'teacher10', 'resnet8', 10)
  # a workdir holding a checkpoint of another experiment (only its meta is read)
  ckpts = Checkpoints(str(root / 'used'), 2, print)
  fingerprint = {**FAKE_FINGERPRINT, 'model': 'resnet20'}
  ckpts.save(8, {'x': np.zeros(3, np.float32)}, {'fingerprint': fingerprint}, wait=True)
  ckpts.close()
  return {'tmp': str(root)}


def _export(path, model_name: str, num_classes: int, **meta) -> None:
  model = create_model(model_name, num_classes)
  v = model.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.float32))
  export.save(str(path), {'params': v['params'], 'batch_stats': v['batch_stats'], 'method': {}},
              {'model': model_name, 'num_classes': num_classes, **meta})


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
    # --- trust boundaries (issue 14) ---
    # config files that give no ConfigDict
    ('config_returns_dict', ['--config', '{tmp}/returns_dict.py', '--workdir', '{tmp}/run'],
     "get_config() returned a dict; it must return an ml_collections.ConfigDict"),
    ('config_returns_none', ['--config', '{tmp}/returns_none.py', '--workdir', '{tmp}/run'],
     'get_config() returned None (is a return statement missing?)'),
    ('config_without_get_config', ['--config', '{tmp}/no_get_config.py', '--workdir',
                                   '{tmp}/run'], 'no_get_config.py defines no get_config()'),
    # workdirs that cannot be used
    ('workdir_is_a_file', FAKE[:2] + ['--workdir', '{tmp}/a_file'] + FAKE[4:],
     '--workdir {tmp}/a_file is a file, not a directory'),
    ('workdir_not_writable', FAKE[:2] + ['--workdir', '/proc/kdjax_run'] + FAKE[4:],
     'cannot write in --workdir /proc/kdjax_run'),
    ('workdir_in_use', FAKE[:2] + ['--workdir', '{tmp}/locked'] + FAKE[4:],
     f'--workdir {{tmp}}/locked is in use by another kdjax run (pid {os.getpid()}'),
    # resuming with a config that would silently mix two experiments
    ('resume_with_changed_lr', FAKE[:2] + ['--workdir', '{tmp}/resume_lr'] + FAKE[4:],
     "config key 'optim.lr' is 0.05 but the run in this workdir was started with 0.01"),
    ('resume_with_smaller_subset', FAKE[:2] + ['--workdir', '{tmp}/resume_subset'] + FAKE[4:],
     "config key 'data.train_examples' is 0 but the run in this workdir was started with 100"),
    ('resume_with_fewer_epochs_than_done', FAKE[:2] + ['--workdir', '{tmp}/resume_epochs']
     + FAKE[4:], "'train.epochs' is 1 but the run in this workdir (started with 5) has "
     'already trained 5'),
    # data files: crafted or damaged CIFAR pickles
    ('cifar_pickle_that_runs_code', FAKE + ['--config.data.name=cifar100',
                                            '--config.data.source=archive',
                                            '--config.data.path={tmp}/evil'],
     'refers to posix.system, which a CIFAR batch never holds; refused without running it'),
    ('cifar_labels_not_integers', FAKE + ['--config.data.name=cifar100',
                                          '--config.data.source=archive',
                                          '--config.data.path={tmp}/bad_labels'],
     'the labels in train must be integers'),
    ('cifar_pixels_outside_0_255', FAKE + ['--config.data.name=cifar100',
                                           '--config.data.source=archive',
                                           '--config.data.path={tmp}/bad_pixels'],
     'the pixel values in train must lie in 0..255, found 300..300'),
    # numbers that pass '> 0' but mean nothing
    ('lr_inf', FAKE + ['--config.optim.lr=inf'], "'optim.lr' must be a finite number, got inf"),
    ('kd_weight_inf', DISTILL + ['--config.method.alpha=inf'],
     "'method.alpha' must be a finite number, got inf"),
    ('milestone_inf', FAKE + ['--config.optim.milestones=(100,1e999)'],
     "'optim.milestones' must be a finite number"),
    ('temperature_inf', DISTILL + ['--config.method.temperature=inf'],
     "'method.temperature' must be a finite number"),
    # method options out of their declared ranges, found before anything compiles
    ('fitnet_hint_layer_missing', TAUGHT + ['--config.method.name=fitnet',
                                            '--config.method.fitnet.hint_layer=9'],
     "config key 'method.fitnet.hint_layer' is 9, but the student has feature maps 0..3"),
    ('fitnet_hint_layer_pooled', TAUGHT + ['--config.method.name=fitnet',
                                           '--config.method.fitnet.hint_layer=4'],
     "'method.fitnet.hint_layer' is 4, but the student has feature maps 0..3"),
    ('fitnet_init_epochs_negative', TAUGHT + ['--config.method.name=fitnet',
                                              '--config.method.fitnet.init_epochs=-1'],
     "config key 'method.fitnet.init_epochs' must be >= 0"),
    ('crd_negative_dimension', TAUGHT + ['--config.method.name=crd',
                                         '--config.method.crd.feat_dim=-128'],
     "config key 'method.crd.feat_dim' must be >= 1, got -128"),
    ('crd_no_negatives', TAUGHT + ['--config.method.name=crd',
                                   '--config.method.crd.negatives=0'],
     "config key 'method.crd.negatives' must be >= 1, got 0"),
    ('crd_momentum_above_one', TAUGHT + ['--config.method.name=crd',
                                         '--config.method.crd.momentum=1.5'],
     "config key 'method.crd.momentum' must be in [0, 1], got 1.5"),
    ('icd_zero_max_scale', TAUGHT + ['--config.method.name=icd',
                                     '--config.method.icd.max_scale=0.0'],
     "config key 'method.icd.max_scale' must be > 0"),
    ('cid_dictionary_update_above_one', TAUGHT + ['--config.method.name=cid',
                                                  '--config.method.cid.cu=2.0'],
     "config key 'method.cid.cu' must be in [0, 1], got 2.0"),
    ('at_zero_power', TAUGHT + ['--config.method.name=at', '--config.method.at.p=0.0'],
     "config key 'method.at.p' must be > 0"),
    # a teacher used where it was not trained
    ('teacher_other_image_size', TAUGHT + ['--config.data.image_size=24'],
     "'data.image_size' is 24 but the teacher in {tmp}/teacher_fake was trained on 32x32"),
    ('teacher_other_dataset', TAUGHT + ['--config.data.name=digits',
                                        '--config.data.source=auto'],
     "'data.name' is 'digits' but the teacher in {tmp}/teacher_fake was trained on 'fake'"),
    # broken exports, found by validate before any data is loaded
    ('teacher_meta_not_json', DISTILL + ['--config.teacher.checkpoint={tmp}/meta_not_json'],
     'kdjax_model.json is not readable JSON (JSONDecodeError'),
    ('teacher_meta_unknown_model', DISTILL + [
        '--config.teacher.checkpoint={tmp}/meta_unknown_model'],
     "names the model 'resnet9', which kdjax does not know"),
    ('teacher_meta_missing_key', DISTILL + ['--config.teacher.checkpoint={tmp}/meta_missing_key'],
     "kdjax_model.json lacks the key 'num_classes'"),
    ('teacher_meta_wrong_type', DISTILL + ['--config.teacher.checkpoint={tmp}/meta_wrong_type'],
     "'num_classes' must be an integer >= 1, got '10'"),
    ('teacher_meta_zero_std', DISTILL + ['--config.teacher.checkpoint={tmp}/meta_zero_std'],
     "'std' must be a list of 3 numbers > 0"),
    ('teacher_variables_truncated', DISTILL + [
        '--config.teacher.checkpoint={tmp}/variables_truncated'],
     'variables_truncated/variables: its files do not match the digest recorded when the model '
     'was exported'),
    ('teacher_variables_missing', DISTILL + [
        '--config.teacher.checkpoint={tmp}/variables_missing'],
     'has no variables/ beside kdjax_model.json; the export is incomplete'),
    ('teacher_variables_flipped', DISTILL + [
        '--config.teacher.checkpoint={tmp}/variables_flipped'],
     'variables_flipped/variables: its files do not match the digest recorded when the model '
     'was exported'),
    ('evaluate_variables_flipped', FAKE + ['--config.mode=evaluate',
                                           '--config.evaluate.checkpoint={tmp}/variables_flipped'],
     "config key 'evaluate.checkpoint': {tmp}/variables_flipped/variables: its files do not "
     'match the digest'),
    # python -m kdjax.convert: unusable normalisation, folders it must not touch
    ('convert_zero_std', CONVERT + ['--std=0.2,0,0.2'],
     '--std must be 3 positive numbers (one per RGB channel), got 0.2,0,0.2'),
    ('convert_two_channel_mean', CONVERT + ['--mean=0.5,0.5'],
     '--mean must be 3 finite numbers (one per RGB channel), got 0.5,0.5'),
    ('convert_nan_mean', CONVERT + ['--mean=nan,0.5,0.5'], '--mean must be 3 finite numbers'),
    ('convert_text_std', CONVERT + ['--std=a,b,c'], "--std must be 3 comma-separated numbers"),
    ('convert_normalization_unknown_for_dataset', CONVERT + [
        '--dataset=cifar10', '--normalization=chenyaofo'],
     "no known 'chenyaofo' normalisation for dataset 'cifar10'"),
    ('convert_normalization_unknown', CONVERT + ['--normalization=imagenet'],
     "flag --normalization=imagenet: value should be one of"),
    ('convert_out_not_an_export', CONVERT + ['--out', '{tmp}/user_folder'],
     'is a folder that is not a kdjax export; refusing to write into it (nothing was changed)'),
    ('convert_out_is_an_export', CONVERT + ['--out', '{tmp}/teacher_fake'],
     'already holds a kdjax export; pass --overwrite to replace it'),
    ('convert_out_is_a_file', CONVERT + ['--out', '{tmp}/a_file'], 'is a file; give a new directory'),
    ('convert_zero_classes', CONVERT + ['--num_classes=0'], '--num_classes must be >= 1, got 0'),
]
N_ORIGINAL_CASES = 36  # before issue 14


@pytest.fixture(scope='module')
def results(assets) -> dict[str, dict]:
  """Every case's CLI run, all through one ``tests/cli_batch.py`` process (one import)."""
  cases = []
  for c in CASES:
    argv = [a.format(**assets) for a in c[1]]
    module = argv.pop(0)[1:] if argv[0].startswith('@') else 'kdjax.main'
    cases.append({'argv': argv, 'env': c[3] if len(c) > 3 else {}, 'module': module})
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='',
             PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get('PYTHONPATH')])))
  with hold(os.path.join(assets['tmp'], 'locked')):  # another run holds this workdir
    batch = subprocess.run([sys.executable, os.path.join(REPO, 'tests', 'cli_batch.py')],
                           input=json.dumps(cases), capture_output=True, text=True, cwd=REPO,
                           env=env, timeout=900)
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


@pytest.mark.slow
def test_bad_inputs_destroy_nothing(results, assets):
  """What the refused commands pointed at is as it was, and no crafted file ran code."""
  root = assets['tmp']
  assert len(results) == len(CASES)
  assert not os.path.exists(os.path.join(root, 'PWNED'))
  assert open(os.path.join(root, 'user_folder', 'notes.txt')).read() == 'my notes'
  assert os.listdir(os.path.join(root, 'user_folder')) == ['notes.txt']
  assert open(os.path.join(root, 'a_file')).read() == 'not a directory'
  assert not os.path.exists(os.path.join(root, 'converted'))
  meta, _ = export.load(os.path.join(root, 'teacher_fake'))  # digest still matches
  assert meta['dataset'] == 'fake'
  for name in ('resume_lr', 'resume_subset', 'resume_epochs'):
    assert os.listdir(os.path.join(root, name, 'checkpoints')) == [
        '80' if name == 'resume_epochs' else '16']
    assert not os.path.exists(os.path.join(root, name, 'metrics.jsonl'))


def test_catalogue_is_complete():
  assert len(CASES) >= N_ORIGINAL_CASES + 25
  assert len({c[0] for c in CASES}) == len(CASES)
