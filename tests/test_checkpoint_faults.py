"""Damaged checkpoints: the run names the bad step, falls back to the previous good one
and ends with exactly the parameters of an undamaged run."""
from __future__ import annotations

import glob
import os
import shutil

import chex
import numpy as np
import pytest

from conftest import tiny_config
from kdjax.train import export, modes
from kdjax.train.checkpoint import CheckpointError

# 8 steps per epoch: checkpoints at steps 16 and 24 are kept
CONFIG = dict(train__epochs=3, checkpoint__keep=2)


@pytest.fixture(scope='module')
def finished(tmp_path_factory) -> str:
  """An undamaged, finished 3-epoch run."""
  workdir = str(tmp_path_factory.mktemp('finished') / 'run')
  modes.run(tiny_config(**CONFIG), workdir)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['16', '24']
  return workdir


def _largest_data_file(step_dir: str) -> str:
  files = [f for f in glob.glob(os.path.join(step_dir, 'state', '**', 'd', '*'), recursive=True)
           if os.path.isfile(f)]
  return max(files, key=os.path.getsize)


def _truncate(step_dir: str) -> None:
  path = _largest_data_file(step_dir)
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)


def _garble(step_dir: str) -> None:
  """Flips bytes in the middle of the largest stored array: the file still decodes."""
  path = _largest_data_file(step_dir)
  data = bytearray(open(path, 'rb').read())
  mid = len(data) // 2
  data[mid:mid + 16] = bytes(b ^ 0xFF for b in data[mid:mid + 16])
  open(path, 'wb').write(bytes(data))


def _delete_meta(step_dir: str) -> None:
  os.remove(os.path.join(step_dir, 'meta', 'metadata'))


def _copy(finished: str, tmp_path) -> str:
  workdir = str(tmp_path / 'run')
  shutil.copytree(finished, workdir)
  shutil.rmtree(os.path.join(workdir, 'model'))  # the rerun must produce its own
  return workdir


@pytest.mark.slow
@pytest.mark.parametrize('damage', [_truncate, _garble, _delete_meta],
                         ids=['truncated', 'garbled', 'meta_deleted'])
def test_damaged_latest_checkpoint_falls_back(damage, finished, tmp_path, capfd):
  workdir = _copy(finished, tmp_path)
  damage(os.path.join(workdir, 'checkpoints', '24'))
  # leftovers of a write killed half-way are ignored and removed
  os.makedirs(os.path.join(workdir, 'checkpoints', '32.orbax-checkpoint-tmp-1234', 'state'))
  modes.run(tiny_config(**CONFIG), workdir)
  out, err = capfd.readouterr()
  assert f'checkpoint step 24 in {workdir}/checkpoints is unreadable (' in err
  assert 'resuming from step 16 instead' in err
  assert f'resuming {workdir} from step 16' in out
  assert 'epoch 3/3' in out and 'epoch 2/3' not in out
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['16', '24']
  _, expected = export.load(finished)
  _, resumed = export.load(workdir)
  chex.assert_trees_all_equal(resumed, expected)


def test_no_readable_checkpoint_is_an_error(finished, tmp_path):
  workdir = _copy(finished, tmp_path)
  for step in ('16', '24'):
    _delete_meta(os.path.join(workdir, 'checkpoints', step))
  with pytest.raises(CheckpointError, match=r'no checkpoint in .* is readable '
                     r'\(steps \[24, 16\]\); delete that directory to start the run over, '
                     'or use a new --workdir'):
    modes.run(tiny_config(**CONFIG), workdir)


def test_digest_depends_on_every_value():
  from kdjax.train.checkpoint import tree_digest
  tree = {'a': np.arange(6, dtype=np.float32), 'b': {'c': np.ones(3, np.int32)}}
  same = {'a': np.arange(6, dtype=np.float32), 'b': {'c': np.ones(3, np.int32)}}
  assert tree_digest(tree) == tree_digest(same)
  changed = {'a': np.arange(6, dtype=np.float32), 'b': {'c': np.array([1, 1, 2], np.int32)}}
  assert tree_digest(tree) != tree_digest(changed)
  assert tree_digest(tree) != tree_digest({'a': tree['a'].astype(np.float64), 'b': tree['b']})
