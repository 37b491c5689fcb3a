"""Several processes training one model: feeds, config checks, and two real processes
on localhost (two simulated CPU devices each) against one process with four."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest

from conftest import tiny_config
from kdjax.config import ConfigError, validate_distributed
from kdjax.data import load_split
from kdjax.train import export
from kdjax.train.feed import DeviceFeed, HostFeed, process_rows, resolve_feed
from kdjax.train.mesh import make_mesh
from kdjax.train.steps import build_train_chunk

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_process_rows_split_the_batch_by_device_owner():
  owners = [0, 0, 1, 1]  # mesh order of 2 processes x 2 devices
  assert process_rows(8, owners, 0) == slice(0, 4)
  assert process_rows(8, owners, 1) == slice(4, 8)
  # uneven device counts per process: 2 + 1 + 1 devices
  rows = [process_rows(8, [0, 0, 1, 2], p) for p in range(3)]
  assert rows == [slice(0, 4), slice(4, 6), slice(6, 8)]
  assert process_rows(6, [0], 0) == slice(0, 6)


@pytest.mark.parametrize('owners, batch, process, message', [
    ([0, 1, 0, 1], 8, 0, 'not consecutive'),
    ([0, 0, 1, 1], 6, 0, 'does not split'),
    ([0, 0, 1, 1], 8, 2, 'owns no device'),
])
def test_process_rows_refuses_what_cannot_be_split(owners, batch, process, message):
  with pytest.raises(ValueError, match=message):
    process_rows(batch, owners, process)


def test_auto_feed_is_device_for_one_process_and_host_for_several():
  assert resolve_feed('auto', 1) == 'device'
  assert resolve_feed('auto', 2) == 'host'
  assert resolve_feed('host', 1) == 'host'


def test_host_and_device_feeds_build_the_same_batches():
  mesh = make_mesh()
  ds = load_split('fake', 'train', source='fake', fake_examples=64, fake_classes=4)
  idx = np.random.default_rng(0).permutation(64)[:48].reshape(3, 16).astype(np.int32)
  host, device = HostFeed(ds, mesh), DeviceFeed(ds, mesh)
  images, labels, got_idx = host.chunk_inputs(idx)
  np.testing.assert_array_equal(np.asarray(images), ds.images[idx])
  np.testing.assert_array_equal(np.asarray(labels), ds.labels[idx])
  np.testing.assert_array_equal(np.asarray(got_idx), idx)
  assert images.sharding.spec == jax.sharding.PartitionSpec(None, 'data')
  mask = (np.arange(48) < 40).astype(np.float32).reshape(3, 16)
  for h, d, i, m in zip(host.eval_batches(idx, mask), device.eval_batches(idx, mask), idx, mask):
    for a, b, want in zip(h, d, (ds.images[i], ds.labels[i], m)):
      np.testing.assert_array_equal(np.asarray(a), want)
      np.testing.assert_array_equal(np.asarray(b), want)


@pytest.mark.slow
@pytest.mark.parametrize('steps_per_call', [1, 2])  # without and with lax.scan
def test_host_and_device_feeds_train_bitwise_alike(steps_per_call):
  from test_train import _setup
  mesh = make_mesh(jax.devices()[:2])
  idx = np.arange(64, dtype=np.int32)[::-1].reshape(-1, steps_per_call, 16)[:2 // steps_per_call]
  results = []
  for feed_cls in (DeviceFeed, HostFeed):
    ds, state, step = _setup(mesh)
    feed = feed_cls(ds, mesh)
    chunk = build_train_chunk(step, mesh, steps_per_call, gather=feed.gather)
    for c in idx:
      state, metrics = chunk(state, {}, *feed.chunk_inputs(c))
    results.append(jax.device_get((state.params, state.batch_stats, metrics)))
  chex.assert_trees_all_equal(*results)


def _distributed(**keys):
  return tiny_config(**{f'distributed__{k}': v for k, v in keys.items()})


@pytest.mark.parametrize('keys, message', [
    (dict(enabled=True), "'distributed.coordinator' must be host:port"),
    (dict(enabled=True, coordinator='localhost'), "'distributed.coordinator' must be host:port"),
    (dict(enabled=True, coordinator='localhost:1'), "'distributed.num_processes' must be >= 2"),
    (dict(enabled=True, coordinator='localhost:1', num_processes=2, process_id=2),
     r"'distributed.process_id' = 2 is outside 0..1"),
    (dict(enabled=True, coordinator='localhost:1', num_processes=2, timeout=0),
     "'distributed.timeout' must be > 0"),
])
def test_validate_distributed_names_the_key(keys, message):
  with pytest.raises(ConfigError, match=message):
    validate_distributed(_distributed(**keys))


def test_device_feed_is_refused_with_several_processes():
  c = _distributed(enabled=True, coordinator='localhost:1', num_processes=2)
  validate_distributed(c)
  c.data.feed = 'device'
  with pytest.raises(ConfigError, match="'data.feed' = 'device' needs a single process"):
    validate_distributed(c)
  c.data.feed = 'disk'
  with pytest.raises(ConfigError, match="'data.feed' is 'disk'; accepted: auto, device, host"):
    validate_distributed(c)


def test_cli_refuses_a_bad_process_id_before_joining(tmp_path):
  out = subprocess.run(
      [sys.executable, '-m', 'kdjax.main', '--config', 'configs/default.py',
       '--workdir', str(tmp_path), '--config.distributed.enabled=True',
       '--config.distributed.coordinator=localhost:1', '--config.distributed.num_processes=2',
       '--config.distributed.process_id=5'],
      cwd=REPO, env=dict(os.environ, JAX_PLATFORMS='cpu'), capture_output=True, text=True,
      timeout=120)
  assert out.returncode == 2
  assert out.stderr.strip().splitlines() == [
      "kdjax: error: config key 'distributed.process_id' = 5 is outside 0..1 "
      "(distributed.num_processes = 2)"]


# -- two real processes -------------------------------------------------------------

# 64 examples in batches of 32: 2 steps per epoch; a constant rate, so that the number
# of epochs (changed on resume) does not change the schedule
_TRAIN = ['--config', 'configs/default.py', '--config.mode=train', '--config.data.name=fake',
          '--config.data.source=fake', '--config.data.fake_examples=64',
          '--config.data.fake_classes=4', '--config.data.crop_padding=2',
          '--config.model.name=resnet8', '--config.optim.schedule=constant',
          '--config.train.batch_size=32', '--config.train.eval_batch_size=32',
          '--config.train.progress=False']
_STEPS_PER_EPOCH = 2


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _start(workdir: str, devices: int, extra: list[str]) -> subprocess.Popen:
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  return subprocess.Popen([sys.executable, '-m', 'kdjax.main', *_TRAIN, '--workdir', workdir,
                           *extra], cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _start_pair(workdir: str, extra: list[str]) -> list[subprocess.Popen]:
  common = ['--config.distributed.enabled=True', '--config.distributed.num_processes=2',
            f'--config.distributed.coordinator=localhost:{_free_port()}',
            '--config.distributed.timeout=120', *extra]
  return [_start(workdir, 2, common + [f'--config.distributed.process_id={p}'])
          for p in range(2)]


def _finish(procs: list[subprocess.Popen], timeout: float = 300) -> list[tuple[int, str, str]]:
  try:
    outs = [p.communicate(timeout=timeout) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  return [(p.returncode, o, e) for p, (o, e) in zip(procs, outs)]


def _records(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def _epochs_logged(workdir: str) -> list[int]:
  return [r['epoch'] for r in _records(workdir)]


@pytest.mark.slow
def test_two_processes_train_like_one_and_resume_after_sigterm(tmp_path):
  """2 processes x 2 devices, stopped by SIGTERM to process 1 and resumed, against
  1 process x 4 devices run straight through."""
  pair_dir = str(tmp_path / 'pair')
  pair = _start_pair(pair_dir, ['--config.train.epochs=30'])
  metrics = os.path.join(pair_dir, 'metrics.jsonl')
  deadline = time.time() + 240
  while time.time() < deadline and not (os.path.exists(metrics) and os.path.getsize(metrics)):
    if any(p.poll() is not None for p in pair):
      break
    time.sleep(0.2)
  pair[1].send_signal(signal.SIGTERM)
  stopped = _finish(pair)
  saved = []
  for code, _, err in stopped:
    assert code == 143, err[-3000:]
    saved.append(int(err.split('SIGTERM: saved step ')[1].split()[0]))
  assert saved[0] == saved[1] >= _STEPS_PER_EPOCH, saved  # both saved the same step
  # resume, mid-epoch if that is where it stopped, and finish one more whole epoch; the
  # one-process reference runs meanwhile
  epochs = saved[0] // _STEPS_PER_EPOCH + 2
  single_dir = str(tmp_path / 'single')
  procs = _start_pair(pair_dir, [f'--config.train.epochs={epochs}'])
  procs.append(_start(single_dir, 4, [f'--config.train.epochs={epochs}']))
  resumed = _finish(procs)
  for code, _, err in resumed:
    assert code == 0, err[-3000:]
  out0, out1 = resumed[0][1], resumed[1][1]
  assert f'resuming {pair_dir} from step {saved[0]}' in out0
  assert 'in 2 processes (host feed)' in out0
  assert 'kdjax:' not in out1  # only process 0 talks
  # one writer: each epoch once per run (the resumed run re-logs the interrupted epoch)
  logged = _epochs_logged(pair_dir)
  assert logged[-1] == epochs and logged == sorted(logged), logged

  # the same batches and arithmetic, only the order of the cross-process sums differs:
  # after one step the parameters agree to float32 rounding (measured 1.2e-7), and the
  # first epoch's loss agrees closely...
  first = [_records(d)[0]['train/loss'] for d in (pair_dir, single_dir)]
  assert abs(first[0] - first[1]) <= 1e-5 * first[1], first
  # ...then training amplifies the rounding (measured 2.7e-5 after 6 steps at lr 0.05,
  # 0.5% on the smallest weights), while other batches or a wrong resume differ by 1e-2
  _, a = export.load(single_dir)
  _, b = export.load(pair_dir)
  diff = max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  print(f'max |param difference| 1x4 vs 2x2 after {epochs * _STEPS_PER_EPOCH} steps: {diff:.3g}')
  chex.assert_trees_all_close(a, b, rtol=1e-3, atol=1e-4)
