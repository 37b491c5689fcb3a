"""What stops a run early and how: signals (save, then ``Preempted``) and non-finite losses
(``NonFiniteLoss`` naming the step, or a bounded number of skipped steps).

The loops check ``StopFlag.raised`` between compiled calls, so a signal never interrupts
a step; ``check_finite`` reads the per-step metrics the loops fetch anyway.
"""
from __future__ import annotations

import signal

import jax
import numpy as np

from kdjax.errors import NonFiniteLoss, Preempted

Metrics = dict[str, np.ndarray]


class StopFlag:
  """Turns SIGTERM and SIGINT (Ctrl-C) into a flag the loop checks between calls (saving
  needs the state); ``signum`` says which arrived."""
  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.raised = False
    self.signum = signal.SIGTERM

  def __enter__(self) -> 'StopFlag':
    self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
    return self

  def _handle(self, signum, frame):
    del frame
    self.raised, self.signum = True, signum

  def __exit__(self, *exc):
    for s, previous in self._previous.items():
      signal.signal(s, previous)


class PreemptionSync:
  """SIGTERM with several processes: jax.distributed's preemption notifier catches it
  (in any process) and every process sees ``raised`` at the same call, so all of them
  save the same step. Checked once per call; ``call`` counts calls from the run's start."""
  signum = signal.SIGTERM

  def __init__(self, call: int):
    self.call = call

  def __enter__(self) -> 'PreemptionSync':
    return self

  def __exit__(self, *exc):
    return False

  @property
  def raised(self) -> bool:
    from jax.experimental import multihost_utils
    self.call += 1
    return multihost_utils.reached_preemption_sync_point(self.call)


def stop_flag(calls_done: int) -> StopFlag | PreemptionSync:
  """The run's flag: the process's own signals, or with several processes the preemption
  sync point, counted from the ``calls_done`` calls an earlier start made."""
  return StopFlag() if jax.process_count() == 1 else PreemptionSync(calls_done)


def preempted(flag: StopFlag | PreemptionSync, saved: str, where: str) -> Preempted:
  """The error to raise once the state is saved (``saved``: e.g. 'step 120')."""
  return Preempted(f'{signal.Signals(flag.signum).name}: saved {saved} in {where}; run the '
                   'same command again to resume', flag.signum)


def _stacked(chunks: list[Metrics], key: str) -> np.ndarray:
  return np.concatenate([np.atleast_1d(c[key]) for c in chunks])


def check_finite(chunks: list[Metrics], step_after: int, skipped: int = 0,
                 max_skipped: int = 0) -> int:
  """The run's count of skipped steps after these chunks (the jitted step skips them when
  ``max_skipped`` > 0); raises NonFiniteLoss naming the step that goes over the bound."""
  losses = _stacked(chunks, 'loss')
  bad = np.flatnonzero(_stacked(chunks, 'skipped') if 'skipped' in chunks[0]
                       else ~np.isfinite(losses))
  if skipped + bad.size <= max_skipped:
    return skipped + bad.size
  i = int(bad[max_skipped - skipped])
  step = step_after - len(losses) + i + 1
  terms = {key: float(_stacked(chunks, key)[i]) for key in chunks[0] if key != 'skipped'}
  what = 'non-finite loss or gradients' if 'skipped' in chunks[0] else 'non-finite loss'
  bound = (f'; {max_skipped + 1} steps skipped, more than train.max_skipped_steps='
           f'{max_skipped}' if max_skipped else '')
  raise NonFiniteLoss(f'{what} at step {step} (terms of that step: {terms}){bound}; '
                      'the last good checkpoint is kept; lower optim.lr or check the inputs')


def epoch_means(chunks: list[Metrics]) -> dict[str, float]:
  """Per-step metrics averaged over the epoch's steps that were not skipped."""
  if 'skipped' not in chunks[0]:
    return {f'train/{key}': float(np.mean(_stacked(chunks, key))) for key in chunks[0]}
  skipped = _stacked(chunks, 'skipped').astype(bool)
  means = {f'train/{key}': float(np.mean(_stacked(chunks, key)[~skipped])) if not skipped.all()
           else float('nan') for key in chunks[0] if key != 'skipped'}
  means['train/skipped_steps'] = float(skipped.sum())
  return means
