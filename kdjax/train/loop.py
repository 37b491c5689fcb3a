"""The epoch loop of a supervised run (train, distill, transfer) and what every loop shares:
evaluation on the test split, the console lines, the progress bar and the run's summary.

``fit`` takes an assembled run (``kdjax.train.assemble``) and its data, resumes from the
workdir's checkpoints, and runs the compiled chunks epoch after epoch with checkpoints,
metrics and exports. It does not know the mode: ``kdjax.train.modes`` decides the
method and the config before calling it.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from kdjax.errors import NonFiniteLoss
from kdjax.train import export
from kdjax.train.assemble import Run, accuracies
from kdjax.train.batches import (chunk_size, due, epoch_chunks, eval_indices, last_batch_size,
                                 steps_per_call)
from kdjax.train.checkpoint import Checkpoints
from kdjax.train.feed import epoch_inputs, make_feed, resolve_feed
from kdjax.train.guards import check_finite, epoch_means, preempted, stop_flag
from kdjax.train.mesh import is_main_process, replicate
from kdjax.train.metrics import open_writer, plot_curves
from kdjax.train.steps import build_train_chunk
from kdjax.train.workdir import check_resume, config_record, record_changes

Evaluation = Callable[[Any], dict[str, float]]


def say(msg: str) -> None:
  """A console line, from process 0 only."""
  if is_main_process():
    print(msg, flush=True)


def warn(msg: str) -> None:
  """A warning line on stderr, from process 0 only."""
  if is_main_process():
    print(f'kdjax: warning: {msg}', file=sys.stderr, flush=True)


def progress_bar(config: ml_collections.ConfigDict, epoch: int, total: int):
  from tqdm.auto import tqdm
  return tqdm(total=total, desc=f'epoch {epoch + 1}/{config.train.epochs}', unit='step',
              leave=False, disable=not config.train.progress or not is_main_process(),
              file=sys.stderr)


def epoch_line(record: dict[str, Any], epochs: int) -> str:
  parts = [f"epoch {record['epoch']}/{epochs}", f"loss {record['train/loss']:.4f}",
           f"train acc {100 * record['train/accuracy']:.2f}%"]
  parts += [f"{k.split('/')[-1]} {100 * v:.2f}%" for k, v in record.items()
            if k.startswith('test/accuracy/')]
  parts.append(f"{record['train/images_per_second']:.0f} img/s")
  return 'kdjax: ' + ', '.join(parts)


def test_evaluation(run: Run, mesh, test_ds, config: ml_collections.ConfigDict) -> Evaluation:
  """``evaluate(state) -> {'test/loss', 'test/accuracy/<head>', ...}`` on the whole test
  split (padded and masked: every example counts once)."""
  evaluate = run.evaluator(mesh)
  feed = make_feed(resolve_feed(config.data.feed, jax.process_count()), test_ds, mesh,
                   config.data.workers, config.data.prefetch)
  idx, mask = eval_indices(len(test_ds), config.train.eval_batch_size)

  def run_eval(state) -> dict[str, float]:
    return accuracies(evaluate({'params': state.params, 'batch_stats': state.batch_stats,
                                'method_state': state.method_state},
                               feed.eval_batches(idx, mask)), 'test/')
  return run_eval


def finish(workdir: str, exports: export.RunExports, state, evaluation: dict[str, float],
           writer, ckpts: Checkpoints, summary: dict[str, Any], t_start: float
           ) -> dict[str, Any]:
  """Ends a run: the final export, closed sinks, the curves and the one-line summary."""
  ckpts.wait()
  exports.final(state, evaluation)
  writer.close()
  ckpts.close()
  plot = plot_curves(workdir) if is_main_process() else None
  last = export.headline(evaluation)
  summary = {'workdir': workdir, **summary, 'last_accuracy': last,
             'best_accuracy': exports.best_accuracy, **evaluation,
             'seconds': time.time() - t_start, 'curves': plot}
  say(f'kdjax: done. test accuracy last {100 * last:.2f}% best '
      f'{100 * summary["best_accuracy"]:.2f}%; model in {workdir}/model, curves {plot}')
  return summary


def fit(run: Run, config: ml_collections.ConfigDict, workdir: str, *, train_ds, test_ds,
        mesh, teacher_vars: Any, fingerprint: dict[str, Any], export_meta: dict[str, Any],
        mode: str, describe: str) -> dict[str, Any]:
  """Trains ``run`` on ``train_ds`` for ``config.train.epochs`` epochs in ``workdir``,
  resuming from its checkpoints; returns the summary (``mode`` names the run in it,
  ``describe`` is its first console line)."""
  batch = config.train.batch_size
  full_steps = len(train_ds) // batch
  last = last_batch_size(len(train_ds), batch, config.data.drop_last, jax.device_count())
  steps_per_epoch = run.steps_per_epoch
  state = replicate(run.state, mesh)

  ckpts = Checkpoints(workdir, config.checkpoint.keep, warn)
  skipped = 0  # steps skipped for a non-finite loss, over the whole run
  resume_changes = {}
  if ckpts.latest_step() is not None:
    state, restored_meta = ckpts.restore(  # a refused config change stops before any read
        state, fingerprint, check=lambda m, step: check_resume(m.get('config'), config,
                                                               step // steps_per_epoch))
    skipped = restored_meta.get('skipped_steps', 0)
    resume_changes = check_resume(restored_meta.get('config'), config,
                                  int(state.step) // steps_per_epoch)
    say(f'kdjax: resuming {workdir} from step {int(state.step)}')

  feed_kind = resolve_feed(config.data.feed, jax.process_count())
  train_feed = make_feed(feed_kind, train_ds, mesh, config.data.workers, config.data.prefetch)
  teacher_vars = replicate(teacher_vars, mesh)
  k = chunk_size(full_steps, steps_per_call(config.train.steps_per_call,
                                            config.data.pipeline == 'streaming'))
  train_chunk = build_train_chunk(run.train_step(mesh, config.train.max_skipped_steps > 0),
                                  mesh, k, gather=train_feed.gather)
  run_eval = test_evaluation(run, mesh, test_ds, config)

  meta = {'fingerprint': fingerprint, 'model': config.model.name,
          'num_classes': export_meta['num_classes'], 'config': config_record(config)}
  writer = open_writer(workdir, is_main_process())
  changes_record = record_changes(resume_changes, say)  # into the next epoch's record
  exports = export.RunExports(workdir, export_meta)
  last_eval: dict[str, float] = {}
  start_epoch = int(state.step) // steps_per_epoch
  say(describe + (f' in {jax.process_count()} processes ({feed_kind} feed)'
                  if jax.process_count() > 1 else ''))

  def check(chunks: list[dict[str, np.ndarray]], step_after: int) -> None:
    nonlocal skipped
    try:
      skipped = check_finite(chunks, step_after, skipped, config.train.max_skipped_steps)
    except NonFiniteLoss:
      ckpts.wait()  # the last good checkpoint may still be being written
      raise
    meta['skipped_steps'] = skipped

  t_start = time.time()
  calls_per_epoch = full_steps // k + (last > 0)
  with stop_flag(start_epoch * calls_per_epoch
                 + int(state.step) % steps_per_epoch // k) as stop:
    for epoch in range(start_epoch, config.train.epochs):
      offset = int(state.step) - epoch * steps_per_epoch
      chunks = epoch_chunks(config.seed, epoch, len(train_ds), batch, k, offset, last)
      bar = progress_bar(config, epoch, sum(len(c) for c in chunks))
      epoch_metrics: list[dict[str, np.ndarray]] = []
      t_epoch = time.time()
      pending = None
      for inputs in epoch_inputs(train_feed, epoch, chunks):
        state, metrics = train_chunk(state, teacher_vars, *inputs)
        if pending is not None:  # read the previous call while this one runs
          epoch_metrics.append(jax.device_get(pending))
          bar.update(len(pending['loss']))
        pending = metrics
        if stop.raised:
          epoch_metrics.append(jax.device_get(pending))
          check(epoch_metrics, int(state.step))
          ckpts.save(int(state.step), state, meta, wait=True)
          bar.close()
          raise preempted(stop, f'step {int(state.step)}', ckpts.directory)
      epoch_metrics.append(jax.device_get(pending))
      bar.update(len(pending['loss']))
      bar.close()
      check(epoch_metrics, int(state.step))
      train_metrics = epoch_means(epoch_metrics)
      if train_metrics.get('train/skipped_steps'):
        say(f'kdjax: warning: epoch {epoch + 1} skipped '
            f"{train_metrics['train/skipped_steps']:.0f} step(s) with a non-finite loss or "
            f'gradients ({skipped} of at most {config.train.max_skipped_steps} in this run)')
      seconds = time.time() - t_epoch
      record = {'epoch': epoch + 1, **train_metrics,
                'train/images_per_second': sum(c.size for c in chunks) / seconds,
                'lr': float(run.schedule(int(state.step) - 1)), **changes_record}
      changes_record = {}
      if due(epoch + 1, config.train.eval_every, config.train.epochs):
        last_eval = run_eval(state)
        record.update(last_eval)
        exports.offer_best(state, last_eval)
      writer.write(int(state.step), record)
      say(epoch_line(record, config.train.epochs))
      if due(epoch + 1, config.checkpoint.every, config.train.epochs):
        ckpts.save(int(state.step), state, meta)
  return finish(workdir, exports, state, last_eval or run_eval(state), writer, ckpts,
                {'mode': mode, 'model': config.model.name, 'method': run.method.name},
                t_start)
