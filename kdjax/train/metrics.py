"""Metric sinks: JSON lines, TensorBoard event files, and a PNG of the curves."""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

import numpy as np

METRICS_FILE = 'metrics.jsonl'
DISTRIBUTIONS_FILE = 'distributions.jsonl'


class MetricWriter:
  """Appends one JSON object per record to ``workdir/metrics.jsonl`` and mirrors the
  scalars to TensorBoard under ``workdir/tensorboard``."""

  def __init__(self, workdir: str):
    from tensorboardX import SummaryWriter
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, METRICS_FILE)
    self._jsonl = open(self.path, 'a')
    self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    record = {'step': int(step)}
    record.update({k: (v if isinstance(v, str) else float(v)) for k, v in metrics.items()})
    self._jsonl.write(json.dumps(record) + '\n')
    self._jsonl.flush()
    for k, v in record.items():
      if k != 'step' and not isinstance(v, str):
        self._tb.add_scalar(k, v, step)
    self._tb.flush()

  def add_image(self, tag: str, image_hwc: np.ndarray, step: int) -> None:
    """A uint8 (H, W, C) picture in TensorBoard's Images tab."""
    self._tb.add_image(tag, image_hwc, step, dataformats='HWC')
    self._tb.flush()

  def add_histogram(self, tag: str, fractions: np.ndarray, step: int) -> None:
    """A distribution over bins (e.g. the pool's classes) as TensorBoard values, and the
    whole vector as a line of ``distributions.jsonl`` (``metrics.jsonl`` keeps one line
    per epoch)."""
    fractions = np.asarray(fractions, np.float64)
    self._tb.add_histogram(tag, np.repeat(np.arange(len(fractions)),
                                          np.round(fractions * 1000).astype(int)), step)
    with open(os.path.join(os.path.dirname(self.path), DISTRIBUTIONS_FILE), 'a') as f:
      f.write(json.dumps({'step': int(step), tag: fractions.round(6).tolist()}) + '\n')

  def close(self) -> None:
    self._jsonl.close()
    self._tb.close()


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  records = []
  with open(path) as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except ValueError:  # a line cut short by a killed run; the resumed run rewrote it
        continue
  return records


def plot_curves(workdir: str, filename: str = 'curves.png') -> str | None:
  """Loss and accuracy per epoch (train and test) as a PNG; returns its path."""
  records = [r for r in read_metrics(workdir) if 'epoch' in r]
  if not records:
    return None
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  # a resumed run re-writes epochs it had already logged: keep the latest record
  by_epoch = {r['epoch']: r for r in records}
  epochs = np.array(sorted(by_epoch))
  rows = [by_epoch[e] for e in epochs]
  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
  for key, label in (('train/loss', 'train loss'), ('test/loss', 'test CE')):
    ax_loss.plot(epochs, [r.get(key, np.nan) for r in rows], label=label)
  acc_keys = sorted({k for r in rows for k in r if k.endswith('accuracy')})
  for key in acc_keys:
    ax_acc.plot(epochs, [100 * r.get(key, np.nan) for r in rows], label=key)
  ax_loss.set(xlabel='epoch', ylabel='loss', title='loss')
  ax_acc.set(xlabel='epoch', ylabel='top-1 %', title='accuracy')
  for ax in (ax_loss, ax_acc):
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  path = os.path.join(workdir, filename)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
