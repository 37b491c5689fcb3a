"""SIGKILL at random points (one of them during a checkpoint write), restart with the
same command until it finishes: the final parameters are bitwise those of a run that
was never interrupted (same device count, CPU)."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import chex
import pytest

from kdjax.train import export

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCHS = 6  # of 8 steps; a checkpoint after each


def _command(workdir: str) -> list[str]:
  return [sys.executable, '-m', 'kdjax.main', '--config', 'configs/default.py',
          '--workdir', workdir, '--config.mode=train', '--config.model.name=resnet8',
          '--config.data.name=fake', '--config.data.source=fake',
          '--config.data.fake_examples=256', '--config.data.fake_classes=4',
          '--config.train.batch_size=32', f'--config.train.epochs={EPOCHS}',
          '--config.train.progress=False', '--config.checkpoint.every=1',
          '--config.checkpoint.keep=2']


def _start(workdir: str, log: str) -> subprocess.Popen:
  # one CPU device; restarts load the compiled steps from a persistent cache (the same
  # executables: compiling is most of a restart's cost on CPU)
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='',
             JAX_COMPILATION_CACHE_DIR=os.path.join(os.path.dirname(workdir), 'jax_cache'),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
  with open(log, 'w') as out:
    return subprocess.Popen(_command(workdir), cwd=REPO, env=env, stdout=out,
                            stderr=subprocess.STDOUT, text=True)


def _epoch_lines(log: str) -> int:
  with open(log) as f:
    return sum(line.startswith('kdjax: epoch ') for line in f)


def _tmp_dirs(workdir: str) -> set[str]:
  """orbax's temporary step directories: checkpoints being written (or left by a kill)."""
  try:
    return {e.name for e in os.scandir(os.path.join(workdir, 'checkpoints')) if 'tmp' in e.name}
  except FileNotFoundError:
    return set()


def _run_until(workdir: str, log: str, trigger: tuple[str, int, float]) -> str:
  """Runs the command and SIGKILLs it when ``trigger`` = (kind, n, x) fires:
  ('checkpoint_write', _, _): as soon as a new checkpoint temporary directory appears;
  ('after_epoch_line', n, x): x seconds after this process prints its n-th epoch line;
  ('mid_epoch', n, x): after the n-th epoch line, at fraction x of the time the epoch
  before it took (n >= 2), so the kill lands inside epoch n + 1 whatever the machine.
  Returns 'checkpoint write' if a write of this process was cut short, else 'training'."""
  kind, n, x = trigger
  leftovers = _tmp_dirs(workdir)  # of an earlier kill; removed when the run starts
  proc = _start(workdir, log)
  lines_at: list[float] = []  # when each epoch line appeared
  fire_at = None
  while proc.poll() is None:
    now = time.time()
    lines_at += [now] * (_epoch_lines(log) - len(lines_at))
    if fire_at is None:
      if kind == 'checkpoint_write' and _tmp_dirs(workdir) - leftovers:
        fire_at = now
      elif kind == 'after_epoch_line' and len(lines_at) >= n:
        fire_at = lines_at[n - 1] + x
      elif kind == 'mid_epoch' and len(lines_at) >= n:
        fire_at = lines_at[n - 1] + x * (lines_at[n - 1] - lines_at[n - 2])
    if fire_at is not None and now >= fire_at:
      proc.send_signal(signal.SIGKILL)
      proc.wait()
      return 'checkpoint write' if _tmp_dirs(workdir) - leftovers else 'training'
    time.sleep(0.002)
  with open(log) as f:
    raise AssertionError(f'the run ended (code {proc.returncode}) before {trigger} fired:\n'
                         + f.read())


@pytest.mark.slow
def test_sigkill_at_random_points_resumes_to_identical_parameters(tmp_path):
  straight = str(tmp_path / 'straight')
  reference = _start(straight, str(tmp_path / 'straight.log'))
  assert reference.wait(timeout=600) == 0, open(str(tmp_path / 'straight.log')).read()

  # seeded points; in this order at least 2 epochs are left for the last run
  rng = random.Random(7)
  triggers = [('mid_epoch', 2, rng.uniform(0.2, 0.8)),
              ('checkpoint_write', 0, 0.0),
              ('after_epoch_line', rng.randint(1, 2), rng.uniform(0.0, 0.2))]
  crashed = str(tmp_path / 'crashed')
  kills = [_run_until(crashed, str(tmp_path / f'kill{i}.log'), t)
           for i, t in enumerate(triggers)]
  assert kills[1] == 'checkpoint write', kills
  final_log = str(tmp_path / 'final.log')
  final = _start(crashed, final_log)
  assert final.wait(timeout=600) == 0, open(final_log).read()

  log = open(final_log).read()
  assert f'resuming {crashed} from step ' in log, log
  assert not _tmp_dirs(crashed)
  _, expected = export.load(straight)
  _, resumed = export.load(crashed)
  chex.assert_trees_all_equal(resumed, expected)  # bitwise
