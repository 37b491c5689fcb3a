"""Shared test helpers.

The reference fixtures live in ``../shared/fixtures`` (next to the checkout; override
with ``KDJAX_SHARED``). CI always has them; a user's clone may not, and then the tests
that need them are skipped with that reason.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

# Eight simulated CPU devices for the whole session, so sharding is exercised by every
# test; must be set before JAX initialises its backend.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
# A persistent compilation cache: many tests (and the CLI runs they start) compile the
# same small programs, and on a 2-core CPU compiling is most of a short test's time.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      str(Path(__file__).resolve().parents[1] / '.jax_cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.2')

import numpy as np
import pytest

SHARED = Path(os.environ.get('KDJAX_SHARED', Path(__file__).resolve().parents[2] / 'shared'))
FIXTURES = SHARED / 'fixtures'


def load_fixture(name: str) -> tuple[dict[str, np.ndarray], dict]:
  """Returns (arrays, json metadata) of ``../shared/fixtures/NAME``, or skips."""
  npz = FIXTURES / f'{name}.npz'
  if not npz.exists():
    pytest.skip(f'reference fixture {npz} not found (needs the ../shared checkout; '
                'set KDJAX_SHARED to its path)')
  with np.load(npz) as data:
    arrays = {k: data[k] for k in data.files}
  meta = json.loads((FIXTURES / f'{name}.json').read_text())
  return arrays, meta


def torch_state_dict(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Rebuilds a model fixture's exact torch state dict (see the fixtures README)."""
  sd = {k[len('param/'):]: v for k, v in arrays.items() if k.startswith('param/')}
  for k, v in arrays.items():
    if k.startswith('q/'):
      key = k[len('q/'):]
      sd[key] = v.astype(np.float32) * arrays['scale/' + key]
  return sd


def close(actual, expected, rtol: float = 1e-4, atol: float = 1e-5) -> None:
  """Fixture comparison at the README's suggested float32 tolerances (shape-agnostic for
  scalars stored as () or (1,))."""
  np.testing.assert_allclose(np.asarray(actual).reshape(np.shape(expected)), expected,
                             rtol=rtol, atol=atol)


def nchw_to_nhwc(x: np.ndarray) -> np.ndarray:
  return np.transpose(x, (0, 2, 3, 1)) if x.ndim == 4 else x


def tiny_config(**overrides):
  """A config that trains in seconds on the fake source (tests only).

  ``overrides`` use dotted keys with '__' for '.', e.g. ``train__epochs=3``.
  """
  from kdjax.config import base_config
  c = base_config()
  c.mode = 'train'
  c.data.name = 'fake'
  c.data.source = 'fake'
  c.data.fake_examples = 256
  c.data.fake_classes = 4
  c.data.crop_padding = 2
  c.model.name = 'resnet8'
  c.method.name = 'kd'
  c.optim.lr = 0.05
  # decayed to ~0 at the end so BatchNorm running statistics catch up with the weights
  c.optim.schedule = 'cosine'
  c.train.epochs = 2
  c.train.batch_size = 32
  c.train.eval_batch_size = 64
  c.train.progress = False
  for key, value in overrides.items():
    *groups, name = key.split('__')
    node = c
    for g in groups:
      node = node[g]
    node[name] = value
  return c


@pytest.fixture(scope='session')
def fake_teacher(tmp_path_factory) -> str:
  """A resnet8 teacher trained briefly on the fake data; returns its workdir."""
  from kdjax.train.modes import run as train
  workdir = str(tmp_path_factory.mktemp('teacher'))
  train(tiny_config(train__epochs=5), workdir)
  return workdir


def stop_after(n: int):
  """A stand-in for ``guards.StopFlag`` whose flag is raised after ``n`` checks: a
  preemption at a chosen step (``monkeypatch.setattr(guards, 'StopFlag', stop_after(n))``)."""
  import signal

  class Flag:
    calls = 0
    signum = signal.SIGTERM

    def __enter__(self):
      return self

    def __exit__(self, *exc):
      return False

    @property
    def raised(self):
      Flag.calls += 1
      return Flag.calls > n
  return Flag


REPO = Path(__file__).resolve().parents[1]
# a CLI training that takes long enough to be signalled after its first epoch
LONG_CLI_RUN = ['-m', 'kdjax.main', '--config', 'configs/default.py', '--config.mode=train',
                '--config.data.name=fake', '--config.data.source=fake',
                '--config.data.fake_examples=256', '--config.train.epochs=30',
                '--config.train.batch_size=32', '--config.train.progress=False',
                '--config.model.name=resnet8']


def signal_after_first_epoch(workdir: str, signum: int, timeout: float = 300):
  """Starts ``LONG_CLI_RUN`` in ``workdir``, sends ``signum`` once its first epoch is
  logged, and returns (exit code, stderr, the command, its environment)."""
  import subprocess
  import sys
  import time
  cmd = [sys.executable, *LONG_CLI_RUN, '--workdir', workdir]
  env = dict(os.environ, XLA_FLAGS='', JAX_PLATFORMS='cpu')
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + timeout
  metrics = os.path.join(workdir, 'metrics.jsonl')
  while time.time() < deadline and not (os.path.exists(metrics) and os.path.getsize(metrics)):
    time.sleep(0.5)
  proc.send_signal(signum)
  _, err = proc.communicate(timeout=timeout)
  return proc.returncode, err, cmd, env
