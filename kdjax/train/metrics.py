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


class NullWriter:
  """The writer of processes other than 0: every process calls the same methods, one writes."""

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    del step, metrics

  def add_image(self, tag: str, image_hwc: np.ndarray, step: int) -> None:
    del tag, image_hwc, step

  def add_histogram(self, tag: str, fractions: np.ndarray, step: int) -> None:
    del tag, fractions, step

  def close(self) -> None:
    pass


def open_writer(workdir: str, main_process: bool) -> MetricWriter | NullWriter:
  return MetricWriter(workdir) if main_process else NullWriter()


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


def _by_epoch(workdir: str) -> tuple[np.ndarray, list[dict[str, Any]]]:
  """The epochs' records in order; a resumed run re-writes epochs it had already logged,
  and the latest record of an epoch wins."""
  by_epoch = {r['epoch']: r for r in read_metrics(workdir) if 'epoch' in r}
  epochs = np.array(sorted(by_epoch))
  return epochs, [by_epoch[e] for e in epochs]


def _series(ax, epochs: np.ndarray, rows: list[dict[str, Any]], key: str, label: str,
            scale: float = 1.0) -> None:
  """One metric over the epochs that have it (test metrics exist only at evaluations)."""
  have = [(e, r[key]) for e, r in zip(epochs, rows) if key in r]
  if have:
    x, y = zip(*have)
    ax.plot(x, scale * np.asarray(y, float), marker='o' if len(have) < 30 else None,
            ms=3, label=label)


def _accuracy_keys(rows: list[dict[str, Any]]) -> list[str]:
  """'train/accuracy' and every head's 'test/accuracy/<head>', the headline first."""
  keys = [k for k in dict.fromkeys(k for r in rows for k in r) if '/accuracy' in k
          and not k.endswith('images_per_second')]
  return sorted(keys, key=lambda k: not k.startswith('test/'))


def _figure(width: float, height: float, panels: int):
  # matplotlib's object API draws with Agg and leaves the process-wide backend alone
  from matplotlib.figure import Figure
  fig = Figure(figsize=(width, height))
  return fig, fig.subplots(1, panels, squeeze=False)[0]


def plot_curves(workdir: str, filename: str = 'curves.png') -> str | None:
  """Loss and accuracy per epoch as a PNG: train loss and test CE, train accuracy and the
  test accuracy of every evaluated head; returns its path."""
  epochs, rows = _by_epoch(workdir)
  if not rows:
    return None
  fig, (ax_loss, ax_acc) = _figure(11, 4, 2)
  for key, label in (('train/loss', 'train loss'), ('test/loss', 'test CE')):
    _series(ax_loss, epochs, rows, key, label)
  for key in _accuracy_keys(rows):
    _series(ax_acc, epochs, rows, key, key.replace('/accuracy', ''), 100)
  ax_loss.set(xlabel='epoch', ylabel='loss', title='loss')
  ax_acc.set(xlabel='epoch', ylabel='top-1 %', title='accuracy')
  for ax in (ax_loss, ax_acc):
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  path = os.path.join(workdir, filename)
  fig.savefig(path, dpi=100)
  return path


def plot_pipeline(workdir: str, stages: Mapping[str, str], filename: str = 'pipeline.png'
                  ) -> str | None:
  """The test accuracy per epoch of several runs in one figure (the pipeline's teacher,
  distilled student and student from labels); ``stages``: name -> workdir."""
  fig, (ax,) = _figure(7, 4.2, 1)
  drawn = 0
  for name, run_dir in stages.items():
    epochs, rows = _by_epoch(run_dir)
    heads = [k for k in _accuracy_keys(rows) if k.startswith('test/')]
    if heads:  # the headline head: what the run reports
      _series(ax, epochs, rows, heads[0], name, 100)
      drawn += 1
  if not drawn:
    return None
  ax.set(xlabel='epoch', ylabel='test top-1 %', title='teacher, distilled student, labels only')
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  path = os.path.join(workdir, filename)
  fig.savefig(path, dpi=100)
  return path
