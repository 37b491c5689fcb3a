"""Trust boundaries: files from the user's disk run no code, damage is detected, what the
user has is never destroyed, and failures end in one line (issue 14).

The one-line CLI cases are in test_bad_inputs.py; here are the mechanisms behind them,
each with the property that failed before: the crafted file created its marker, the
damaged export loaded, the failed save deleted the previous export, two runs shared a
workdir, a changed learning rate was applied on resume, Ctrl-C left a traceback.
"""
from __future__ import annotations

import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import signal_after_first_epoch, tiny_config
from kdjax.config import ConfigError
from kdjax.data import DataError, load_split
from kdjax.models import create_model
from kdjax.train import export, modes, workdir
from kdjax.train.metrics import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Evil:
  def __init__(self, marker: str):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f'touch {self.marker}',)


def _variables(num_classes: int = 4) -> dict:
  v = create_model('resnet8', num_classes).init(jax.random.PRNGKey(0),
                                                np.zeros((1, 32, 32, 3), np.float32))
  return {'params': v['params'], 'batch_stats': v['batch_stats'], 'method': {}}


META = {'model': 'resnet8', 'num_classes': 4}

# ---------------------------------------------------------------------------------------
# a file never runs code


def test_crafted_cifar_pickle_runs_nothing(tmp_path):
  marker = tmp_path / 'PWNED'
  folder = tmp_path / 'cifar-100-python'
  folder.mkdir()
  for f in ('train', 'test', 'meta'):
    (folder / f).write_bytes(pickle.dumps({b'data': _Evil(str(marker))}, protocol=2))
  with pytest.raises(DataError, match='refers to posix.system, which a CIFAR batch never holds'):
    load_split('cifar100', 'train', source='archive', path=str(tmp_path))
  assert not marker.exists()


def test_cifar_pickles_as_written_by_python3_still_load(tmp_path):
  """numpy arrays, bytes via _codecs at protocol 2, numpy scalars as labels: all admitted."""
  folder = tmp_path / 'cifar-100-python'
  folder.mkdir()
  data = (np.arange(2 * 3072) % 256).astype(np.uint8).reshape(2, 3072)
  for protocol in (2, 4):
    batch = {b'data': data, b'fine_labels': [np.int64(3), 7], b'filenames': [b'a', b'b']}
    for f in ('train', 'test', 'meta'):
      (folder / f).write_bytes(pickle.dumps(batch, protocol=protocol))
    ds = load_split('cifar100', 'train', source='archive', path=str(tmp_path))
    np.testing.assert_array_equal(ds.labels, [3, 7])
    np.testing.assert_array_equal(ds.images[1, 0, 0], data[1, [0, 1024, 2048]])


def test_crafted_pth_runs_nothing_and_pickles_need_the_opt_in(tmp_path):
  torch = pytest.importorskip('torch', reason="reading .pth needs the optional extra kdjax[torch]")
  import argparse

  from kdjax.models.torch_import import UnsafeCheckpointError, load_torch_file
  marker = tmp_path / 'PWNED'
  torch.save({'model': {'w': torch.zeros(2)}, 'opt': _Evil(str(marker))}, tmp_path / 'evil.pth')
  result = subprocess.run(
      [sys.executable, '-m', 'kdjax.convert', '--torch_checkpoint', str(tmp_path / 'evil.pth'),
       '--model', 'resnet8', '--out', str(tmp_path / 'out')], capture_output=True, text=True,
      cwd=REPO, timeout=300, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert result.returncode == 2, result.stderr
  assert 'Traceback' not in result.stderr
  assert result.stderr.strip().splitlines()[-1].endswith(
      'evil.pth: holds more than tensors (it refers to posix.system), and loading it would run '
      'code from the file; refused. If it comes from a source you trust, pass --allow_pickle')
  assert not marker.exists() and not (tmp_path / 'out').exists()
  # a legitimate checkpoint that pickled its options loads only with the explicit opt-in
  torch.save({'model': {'w': torch.ones(2)}, 'opt': argparse.Namespace(lr=0.1)},
             tmp_path / 'options.pth')
  with pytest.raises(UnsafeCheckpointError, match='argparse.Namespace'):
    load_torch_file(str(tmp_path / 'options.pth'))
  np.testing.assert_array_equal(load_torch_file(str(tmp_path / 'options.pth'),
                                                allow_pickle=True)['w'], [1.0, 1.0])


# ---------------------------------------------------------------------------------------
# a damaged export is detected, never used


def test_changed_export_values_are_reported_on_every_load(tmp_path):
  path = str(tmp_path / 'e')
  export.save(path, _variables(), META)
  meta, variables = export.load(path)
  # values changed behind kdjax's back, in a store orbax still reads without complaint
  variables['params']['conv1']['kernel'] = variables['params']['conv1']['kernel'] + 1e-3
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(path, export.VARIABLES_DIR), variables, force=True)
  message = (f'{path}/variables: its files do not match the digest recorded when the model '
             'was exported')
  with pytest.raises(export.ExportError, match=message):
    export.load(path)
  with pytest.raises(export.ExportError, match=message):  # what validate calls
    export.check_exported(path)
  from kdjax.config import validate
  cfg = tiny_config(mode='distill', teacher__checkpoint=path)
  with pytest.raises(ConfigError, match="config key 'teacher.checkpoint': .*do not match"):
    validate(cfg)


@pytest.mark.parametrize('damage', ['truncate', 'flip', 'remove'])
def test_damaged_export_files_are_refused_before_orbax_reads_them(damage, tmp_path, capfd):
  import glob
  path = str(tmp_path / 'e')
  export.save(path, _variables(), META)
  files = [f for f in glob.glob(f'{path}/variables/**/*', recursive=True) if os.path.isfile(f)]
  biggest = max(files, key=os.path.getsize)
  if damage == 'truncate':
    os.truncate(biggest, os.path.getsize(biggest) // 2)
  elif damage == 'flip':
    data = bytearray(open(biggest, 'rb').read())
    data[len(data) // 2] ^= 0x01  # one bit
    open(biggest, 'wb').write(bytes(data))
  else:
    os.remove(biggest)
  capfd.readouterr()
  with pytest.raises(export.ExportError, match='its files do not match the digest'):
    export.load(path)
  time.sleep(0.5)  # orbax's pending reads, had it started any, would print by now
  assert 'Traceback' not in capfd.readouterr().err


# ---------------------------------------------------------------------------------------
# never destroy what the user has


def _disk_full(*args, **kwargs):
  raise OSError(errno.ENOSPC, 'No space left on device')


@pytest.mark.parametrize('where', ['variables', 'metadata'])
def test_full_disk_leaves_the_previous_export_intact(where, tmp_path, monkeypatch):
  path = str(tmp_path / 'best')
  export.save(path, _variables(), {**META, 'test_accuracy': 0.29})
  before = export.load(path)
  with monkeypatch.context() as m:
    if where == 'variables':
      m.setattr(ocp.StandardCheckpointer, 'save', _disk_full)
    else:  # the variables are written, then the metadata fails
      m.setattr(export.json, 'dump', _disk_full)
    with pytest.raises(OSError) as raised:
      export.save(path, jax.tree.map(lambda x: x * 0, _variables()), {**META, 'test_accuracy': 0.3})
  assert export.disk_full(raised.value)
  after = export.load(path)
  assert after[0]['test_accuracy'] == 0.29
  chex.assert_trees_all_equal(after[1], before[1])
  assert sorted(os.listdir(tmp_path)) == ['best']  # nothing half-written left beside it


_FILL_THE_DISK = """
import json, os, sys
import jax, numpy as np
sys.path.insert(0, sys.argv[2])
from kdjax.models import create_model
from kdjax.train import export
v = create_model('resnet8', 4).init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.float32))
v = {'params': v['params'], 'batch_stats': v['batch_stats'], 'method': {}}
path = os.path.join(sys.argv[1], 'best')
export.save(path, v, {'model': 'resnet8', 'num_classes': 4, 'test_accuracy': 0.1})
try:
  export.save(path, jax.tree.map(lambda x: x + 1, v), {'model': 'resnet8', 'num_classes': 4})
  full = None
except Exception as e:
  full = export.disk_full(e)
from kdjax.config import ConfigError
from kdjax.train.workdir import check_writable
try:
  check_writable(os.path.join(sys.argv[3], 'run'))
  read_only = None
except ConfigError as e:
  read_only = str(e)
print(json.dumps({'full': full, 'accuracy': export.load(path)[0]['test_accuracy'],
                  'listing': sorted(os.listdir(sys.argv[1])), 'read_only': read_only}))
"""


@pytest.mark.slow
def test_a_real_full_disk_leaves_the_previous_export_intact(tmp_path):
  """On a 600 KiB tmpfs (in a private mount namespace) one resnet8 export fits, two do not;
  a workdir on a read-only file system is refused in one line."""
  import shutil
  if shutil.which('unshare') is None or subprocess.run(
      ['unshare', '-m', 'true'], capture_output=True).returncode != 0:
    pytest.skip('cannot create a mount namespace here (needs root); the injected ENOSPC '
                'test covers the same path')
  (tmp_path / 'disk').mkdir()
  (tmp_path / 'ro').mkdir()
  (tmp_path / 'fill.py').write_text(_FILL_THE_DISK)
  result = subprocess.run(
      ['unshare', '-m', '--propagation', 'private', 'sh', '-c',
       f'mount -t tmpfs -o size=600k tmpfs {tmp_path}/disk && '
       f'mount -t tmpfs -o ro,size=64k tmpfs {tmp_path}/ro && '
       f'{sys.executable} {tmp_path}/fill.py {tmp_path}/disk {REPO} {tmp_path}/ro'],
      capture_output=True, text=True, timeout=600, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert result.returncode == 0, result.stderr[-2000:]
  outcome = json.loads(result.stdout.strip().splitlines()[-1])
  assert outcome == {'full': True, 'accuracy': 0.1, 'listing': ['best'], 'read_only': (
      f'cannot write in --workdir {tmp_path}/ro/run (Read-only file system); give a directory '
      'on a writable file system')}


def test_interrupted_swap_is_recovered(tmp_path):
  """Killed between the two renames of a replacement: the old export is still found and
  put back by the next save."""
  path = str(tmp_path / 'best')
  export.save(path, _variables(), {**META, 'test_accuracy': 0.1})
  os.rename(path, path + export.OLD_SUFFIX)
  assert export.read_meta(path)['test_accuracy'] == 0.1
  export.save(path, _variables(), {**META, 'test_accuracy': 0.2})
  assert sorted(os.listdir(tmp_path)) == ['best']
  assert export.read_meta(path)['test_accuracy'] == 0.2


def test_save_never_replaces_a_folder_kdjax_did_not_write(tmp_path):
  (tmp_path / 'mine').mkdir()
  (tmp_path / 'mine' / 'thesis.tex').write_text('years of work')
  with pytest.raises(export.ExportError, match='is not a kdjax export .*nothing was changed'):
    export.save(str(tmp_path / 'mine'), _variables(), META)
  assert os.listdir(tmp_path / 'mine') == ['thesis.tex']


def test_full_disk_is_one_line_from_main(capsys):
  from kdjax import main
  try:
    raise RuntimeError('write failed') from OSError(errno.ENOSPC, 'No space left on device')
  except RuntimeError as e:
    with pytest.raises(SystemExit) as code:
      main._unexpected(e, None)
  assert code.value.code == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith('kdjax: error: no space left on the device') and '\n' not in err


def test_unforeseen_error_is_one_line_and_a_traceback_file(tmp_path, capsys):
  from kdjax import main
  try:
    raise KeyError('something kdjax did not foresee')
  except KeyError as e:
    with pytest.raises(SystemExit) as code:
      main._unexpected(e, str(tmp_path))
  assert code.value.code == 1
  err = capsys.readouterr().err.strip()
  assert '\n' not in err and err.startswith('kdjax: error: unexpected KeyError: ')
  path = err.split('full traceback in ')[1].split(')')[0]
  assert os.path.dirname(path) == str(tmp_path)
  assert "KeyError: 'something kdjax did not foresee'" in open(path).read()


def test_second_run_on_a_locked_workdir_is_refused(tmp_path):
  run = str(tmp_path / 'run')
  with workdir.hold(run):
    with pytest.raises(ConfigError, match=f'--workdir {run} is in use by another kdjax run '
                       f'\\(pid {os.getpid()} on '):
      modes.run(tiny_config(), run)
  assert not os.path.exists(os.path.join(run, 'checkpoints'))


def test_lock_of_a_dead_process_is_no_obstacle(tmp_path):
  """The lock file stays behind when its holder is SIGKILLed; the kernel dropped the lock."""
  holder = subprocess.Popen([sys.executable, '-c', (
      'import sys, time; sys.path.insert(0, sys.argv[1]); from kdjax.train import workdir\n'
      'with workdir.hold(sys.argv[2]):\n  print("held", flush=True); time.sleep(600)'),
      REPO, str(tmp_path)], stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == 'held'
  with pytest.raises(ConfigError, match=f'pid {holder.pid} '):
    with workdir.hold(str(tmp_path)):
      pass
  holder.send_signal(signal.SIGKILL)
  holder.wait(timeout=60)
  assert json.loads((tmp_path / workdir.LOCK_FILE).read_text())['pid'] == holder.pid
  with workdir.hold(str(tmp_path)):  # taken over at once
    pass


@pytest.fixture(scope='module')
def one_epoch(tmp_path_factory) -> str:
  run = str(tmp_path_factory.mktemp('resume') / 'run')
  modes.run(tiny_config(train__epochs=1), run)
  return run


def _copy(src: str, tmp_path) -> str:
  import shutil
  dst = str(tmp_path / 'run')
  shutil.copytree(src, dst)
  return dst


@pytest.mark.parametrize('key,value,old', [('optim__lr', 0.1, 0.05),
                                           ('data__train_examples', 64, 0),
                                           ('method__temperature', 2.0, 4.0)])
def test_resume_with_a_changed_config_is_refused(key, value, old, one_epoch, tmp_path):
  run = _copy(one_epoch, tmp_path)
  name = key.replace('__', '.')
  with pytest.raises(ConfigError, match=f"config key '{name}' is {value!r} but the run in this "
                     f'workdir was started with {old!r}'):
    modes.run(tiny_config(train__epochs=2, **{key: value}), run)
  assert [r['epoch'] for r in read_metrics(run) if 'epoch' in r] == [1]


def test_resume_may_extend_and_the_change_is_recorded(one_epoch, tmp_path, capsys):
  run = _copy(one_epoch, tmp_path)
  modes.run(tiny_config(train__epochs=2, train__eval_every=2), run)
  assert 'kdjax: resuming with changed train.epochs: 1 -> 2, train.eval_every: 1 -> 2' in (
      capsys.readouterr().out)
  records = read_metrics(run)
  assert [r['epoch'] for r in records] == [1, 2]  # every record stays an epoch's
  assert 'resume_changes' not in records[0]
  assert json.loads(records[1]['resume_changes']) == {
      'train.epochs': {'old': 1, 'new': 2}, 'train.eval_every': {'old': 1, 'new': 2}}


def test_check_resume_rules():
  cfg = tiny_config(train__epochs=3)
  saved = workdir.config_record(tiny_config(train__epochs=5))
  assert workdir.check_resume(saved, cfg, done_epochs=2) == {'train.epochs': (5, 3)}
  with pytest.raises(ConfigError, match='has already trained 4; it can be extended or stopped '
                     'earlier, not undone'):
    workdir.check_resume(saved, cfg, done_epochs=4)
  # keys a checkpoint predates (added to kdjax since) are not changes
  assert workdir.check_resume({'optim.lr': 0.05}, cfg) == {}
  assert workdir.check_resume(None, cfg) == {}
  with pytest.raises(ConfigError, match="config key 'seed' is 0 but .* started with 7"):
    workdir.check_resume({**saved, 'seed': 7}, cfg)


@pytest.mark.slow
def test_sigint_saves_and_exits_130(tmp_path):
  code, err, _, _ = signal_after_first_epoch(str(tmp_path), signal.SIGINT)  # what Ctrl-C sends
  assert code == 130, err
  assert 'Traceback' not in err and 'KeyboardInterrupt' not in err
  line = err.strip().splitlines()[-1]
  assert line.startswith('kdjax: error: SIGINT: saved step ')
  saved = line.split('saved step ')[1].split()[0]
  assert saved in os.listdir(os.path.join(str(tmp_path), 'checkpoints'))
