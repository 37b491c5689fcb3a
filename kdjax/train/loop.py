"""Runs a config: train a model, distil a student, evaluate an export, or all in a row.

This is where the side effects live: data loading, device placement, the epoch loop,
checkpoints, exports, metrics and the console.
"""
from __future__ import annotations

import copy
import math
import os
import signal
import sys
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from kdjax import methods
from kdjax.config import ConfigError
from kdjax.data import ArrayDataset, load_split
from kdjax.methods import InitContext
from kdjax.models import create_model
from kdjax.train import export, transfer
from kdjax.train.checkpoint import Checkpoints
from kdjax.train.feed import epoch_inputs, make_feed, resolve_feed
from kdjax.train.mesh import is_main_process, make_mesh, replicate
from kdjax.train.metrics import MetricWriter, plot_curves
from kdjax.train.stream_feed import image_shape, streaming_splits
from kdjax.train.state import TrainState, learning_rate_schedule, make_optimizer
from kdjax.train.steps import DataSpec, build_eval, build_train_chunk, build_train_step, forward
from kdjax.train.workdir import check_resume, config_record, locked, record_changes

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


class Preempted(Exception):
  """SIGTERM or SIGINT arrived; the state was saved and the run can be resumed."""

  def __init__(self, message: str, signum: int = signal.SIGTERM):
    super().__init__(message)
    self.signum = signum


class NonFiniteLoss(Exception):
  """A loss became NaN/inf; the last good checkpoint is kept."""


def epoch_indices(seed: int, epoch: int, num_examples: int, batch_size: int) -> np.ndarray:
  """The (steps, batch) dataset indices of one epoch: a permutation fixed by (seed, epoch).

  The incomplete last batch is dropped so that every step has the same shape.
  """
  steps = num_examples // batch_size
  perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
  return perm[:steps * batch_size].reshape(steps, batch_size).astype(np.int32)


def last_batch_size(num_examples: int, batch_size: int, drop_last: bool, devices: int) -> int:
  """Rows of the epoch's last partial batch: 0 with ``drop_last``, else the remainder
  trimmed to a multiple of ``devices`` (a batch is split evenly over the devices; at most
  ``devices - 1`` examples an epoch are left out, a different few each epoch)."""
  if drop_last:
    return 0
  rest = num_examples % batch_size
  return rest - rest % devices


def last_batch(seed: int, epoch: int, num_examples: int, batch_size: int, size: int
               ) -> np.ndarray:
  """The (1, size) indices of the partial batch after ``epoch_indices``' full ones (the
  same permutation's tail)."""
  perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
  start = num_examples // batch_size * batch_size
  return perm[start:start + size].reshape(1, size).astype(np.int32)


def epoch_chunks(seed: int, epoch: int, num_examples: int, batch_size: int, k: int,
                 offset: int, last: int) -> list[np.ndarray]:
  """The epoch's calls from step ``offset`` on: (k, B) chunks of the full batches, then
  (with ``last`` > 0) the partial batch as a (1, last) call of its own shape (the train
  chunk is compiled once more for it; its rows are all real examples, so BatchNorm
  statistics and the losses see no padding)."""
  idx = epoch_indices(seed, epoch, num_examples, batch_size)[offset:]
  chunks = list(idx.reshape(-1, k, batch_size))
  if last:
    chunks.append(last_batch(seed, epoch, num_examples, batch_size, last))
  return chunks


def eval_indices(num_examples: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Sequential indices padded to whole batches, and the mask of the real ones."""
  steps = math.ceil(num_examples / batch_size)
  idx = np.arange(steps * batch_size)
  mask = (idx < num_examples).astype(np.float32)
  idx = np.where(idx < num_examples, idx, 0).astype(np.int32)
  return idx.reshape(steps, batch_size), mask.reshape(steps, batch_size)


def chunk_size(steps_per_epoch: int, steps_per_call: int) -> int:
  """The largest divisor of the epoch's step count not above ``steps_per_call``.

  Every call then has the same shape (one compilation) and epochs end on a call boundary.
  """
  return max(d for d in range(1, min(steps_per_epoch, steps_per_call) + 1)
             if steps_per_epoch % d == 0)


def method_for(config: ml_collections.ConfigDict) -> tuple[methods.Method,
                                                                ml_collections.ConfigDict]:
  """Modes 'train' and 'transfer' are plain CE on labels whatever the method section says."""
  if config.mode in ('train', 'transfer'):
    cfg = ml_collections.ConfigDict(dict(name='ce', gamma=1.0, alpha=0.0, beta=0.0,
                                         temperature=config.method.temperature))
    return methods.get_method('ce'), ml_collections.FrozenConfigDict(cfg)
  # KDCI wraps the named method when method.kdci.enabled
  return (methods.resolve(config.method.name, config.method),
          ml_collections.FrozenConfigDict(config.method))


def fingerprint(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """What must not change between a checkpoint and the run resuming from it."""
  fp = {'mode': config.mode, 'model': config.model.name, 'method': method_for(config)[0].name,
        'data': config.data.name, 'batch_size': config.train.batch_size,
        'seed': config.seed, 'devices': jax.device_count()}
  if not config.data.drop_last:  # another step count per epoch (absent: dropped, as before)
    fp['drop_last'] = False
  if config.mode == 'transfer':  # a probe of another backbone is another experiment
    fp['backbone'] = export.resolve(config.transfer.checkpoint)
  return fp


def load_data(config: ml_collections.ConfigDict) -> tuple[ArrayDataset, ArrayDataset]:
  d = config.data
  if d.pipeline == 'streaming':  # read example by example (kdjax.data.streaming)
    return streaming_splits(config, ('train', 'test'))
  kwargs = dict(source=d.source, path=d.path, image_size=d.image_size,
                fake_examples=d.fake_examples, fake_classes=d.fake_classes, seed=config.seed)
  train_ds = load_split(d.name, 'train', **kwargs)
  if d.train_examples:
    train_ds = train_ds.subset(d.train_examples)
  return train_ds, load_split(d.name, 'test', **kwargs)


def load_teacher(config: ml_collections.ConfigDict, num_classes: int
                 ) -> tuple[Any, dict[str, Any], dict[str, Any]]:
  meta, variables = export.load(config.teacher.checkpoint)
  if meta['num_classes'] != num_classes:
    raise ConfigError(f"config key 'teacher.checkpoint': the teacher predicts "
                      f"{meta['num_classes']} classes but {config.data.name} has {num_classes}")
  export.check_variables(meta, variables)
  model = export.model_from_meta(meta, DTYPES[config.model.dtype])
  return model, {'params': variables['params'], 'batch_stats': variables['batch_stats']}, meta


class _SigtermFlag:
  """Turns SIGTERM and SIGINT (Ctrl-C) into a flag the loop checks between calls (saving
  needs the state); ``signum`` says which arrived."""
  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.raised = False
    self.signum = signal.SIGTERM

  def __enter__(self):
    self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
    return self

  def _handle(self, signum, frame):
    del frame
    self.raised, self.signum = True, signum

  def __exit__(self, *exc):
    for s, previous in self._previous.items():
      signal.signal(s, previous)


class _PreemptionSync:
  """SIGTERM with several processes: jax.distributed's preemption notifier catches it
  (in any process) and every process sees ``raised`` at the same call, so all of them
  save the same step. Checked once per call; ``call`` counts calls from the run's start."""

  def __init__(self, call: int):
    self.call = call

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False

  @property
  def raised(self) -> bool:
    from jax.experimental import multihost_utils
    self.call += 1
    return multihost_utils.reached_preemption_sync_point(self.call)


def _print(msg: str) -> None:
  if is_main_process():
    print(msg, flush=True)


class RunSetup(NamedTuple):
  student: Any
  schedule: Any
  tx: Any
  state: TrainState


def build_run(config: ml_collections.ConfigDict, num_classes: int, num_train: int,
              image_shape: tuple[int, ...], teacher: Any, teacher_vars: Any,
              steps_per_epoch: int, train_labels: np.ndarray | None = None,
              backbone: transfer.Backbone | None = None) -> RunSetup:
  """The student, its method's variables, the optimizer and the initial state of a run
  (pure: also used by the benchmark, so it measures exactly what training runs).
  With a ``backbone`` (mode transfer) the student is a linear probe on it."""
  method, method_cfg = method_for(config)
  init_key, method_key, state_key = jax.random.split(jax.random.PRNGKey(config.seed), 3)
  sample = jnp.zeros((2,) + tuple(image_shape), jnp.float32)
  if backbone is None:
    student = create_model(config.model.name, num_classes, DTYPES[config.model.dtype])
    student_vars = student.init(init_key, sample, train=False)
  else:
    student, student_vars = transfer.init_probe(backbone, num_classes,
                                                DTYPES[config.model.dtype], init_key, sample)
  teacher_out = forward(teacher, teacher_vars, sample) if teacher is not None else None
  mvars = method.init(InitContext(
      rng=method_key, student=forward(student, student_vars, sample), teacher=teacher_out,
      num_classes=num_classes, num_train=num_train, train_labels=train_labels,
      config=method_cfg))
  params = {'student': student_vars['params'], 'method': mvars.params}
  schedule = learning_rate_schedule(config.optim, steps_per_epoch, config.train.epochs)
  delayed = None
  if method.delayed_params is not None:  # e.g. CID's interventional head before phase 2
    held, epochs = method.delayed_params(mvars.params, method_cfg)
    delayed = ({'student': jax.tree.map(lambda _: False, params['student']), 'method': held},
               epochs * steps_per_epoch)
  tx = make_optimizer(config.optim, schedule, {
      'student': jax.tree.map(lambda _: True, params['student']),
      'method': method.decay_mask(mvars.params)}, trainable=transfer.trainable(params, backbone),
      delayed=delayed)
  state = TrainState(
      step=jnp.zeros((), jnp.int32), params=params,
      batch_stats={'student': student_vars.get('batch_stats', {}), 'method': mvars.batch_stats},
      opt_state=tx.init(params), method_state=mvars.state, rng=state_key)
  return RunSetup(student, schedule, tx, state)


@locked  # one run per workdir at a time
def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (mode train), distils (mode distill) or probes a frozen backbone (mode
  transfer) in ``workdir``, resuming if possible."""
  backbone = transfer.load_backbone(config)
  config = transfer.run_config(config, backbone)
  os.makedirs(workdir, exist_ok=True)
  mesh = make_mesh()
  method, method_cfg = method_for(config)
  train_ds, test_ds = load_data(config)
  num_classes = train_ds.num_classes
  batch = config.train.batch_size
  full_steps = len(train_ds) // batch
  last = last_batch_size(len(train_ds), batch, config.data.drop_last, jax.device_count())
  steps_per_epoch = full_steps + (last > 0)
  if full_steps == 0:
    raise ConfigError(f"config key 'train.batch_size' = {batch} is larger than the "
                      f"{len(train_ds)} training examples")
  teacher, teacher_vars, teacher_meta = None, {}, None
  if method.needs_teacher:
    teacher, teacher_vars, teacher_meta = load_teacher(config, num_classes)

  setup = build_run(config, num_classes, len(train_ds), image_shape(train_ds), teacher,
                    teacher_vars, steps_per_epoch, train_labels=train_ds.labels,
                    backbone=backbone)
  student, schedule, tx = setup.student, setup.schedule, setup.tx
  # distinct buffers per leaf: donation fails when two leaves alias one array
  state = replicate(jax.tree.map(lambda x: jnp.array(x, copy=True), setup.state), mesh)

  ckpts = Checkpoints(workdir, config.checkpoint.keep)
  fp = fingerprint(config)
  skipped = 0  # steps skipped for a non-finite loss, over the whole run
  resume_changes = {}
  if ckpts.latest_step() is not None:
    state, restored_meta = ckpts.restore(  # a refused config change stops before any read
        state, fp, check=lambda m, step: check_resume(m.get('config'), config,
                                                      step // steps_per_epoch))
    skipped = restored_meta.get('skipped_steps', 0)
    resume_changes = check_resume(restored_meta.get('config'), config,
                                  int(state.step) // steps_per_epoch)
    _print(f'kdjax: resuming {workdir} from step {int(state.step)}')

  feed_kind = resolve_feed(config.data.feed, jax.process_count())
  train_feed = make_feed(feed_kind, train_ds, mesh, config.data.workers, config.data.prefetch)
  test_feed = make_feed(feed_kind, test_ds, mesh, config.data.workers, config.data.prefetch)
  teacher_vars = replicate(teacher_vars, mesh)
  data = DataSpec(*transfer.normalization(train_ds, backbone), config.data.crop_padding,
                  config.data.flip)
  step_fn = build_train_step(student, teacher, method, method_cfg, tx, data, steps_per_epoch, mesh,
                             skip_nonfinite=config.train.max_skipped_steps > 0)
  k = chunk_size(full_steps, config.train.steps_per_call or (  # streamed: a call per batch
      1 if jax.devices()[0].platform == 'cpu' or config.data.pipeline == 'streaming' else 100))
  train_chunk = build_train_chunk(step_fn, mesh, k, gather=train_feed.gather)
  evaluate = build_eval(student, method, method_cfg, data, mesh)
  eval_idx, eval_mask = eval_indices(len(test_ds), config.train.eval_batch_size)

  def run_eval(st: TrainState) -> dict[str, float]:
    sums = _to_host(evaluate({'params': st.params, 'batch_stats': st.batch_stats,
                              'method_state': st.method_state},
                             test_feed.eval_batches(eval_idx, eval_mask)))
    count = float(sums.pop('count'))
    out = {'test/loss': float(sums.pop('loss')) / count}
    out.update({f'test/accuracy/{k.split("/", 1)[1]}': float(v) / count for k, v in sums.items()})
    return out

  meta = {'fingerprint': fp, 'model': config.model.name, 'num_classes': num_classes,
          'config': config_record(config)}
  writer = MetricWriter(workdir) if is_main_process() else None
  changes_record = record_changes(resume_changes, _print)  # into the next epoch's record
  best_path = os.path.join(workdir, 'best')
  best_acc = export.read_meta(best_path)['test_accuracy'] if os.path.exists(
      os.path.join(best_path, export.META_FILE)) else -1.0
  headline = None
  last_eval: dict[str, float] = {}
  start_epoch = int(state.step) // steps_per_epoch
  _print(f'kdjax: {config.mode} {config.model.name} with {method.name} on {config.data.name} '
         f'({len(train_ds)} train / {len(test_ds)} test, {num_classes} classes), '
         f'{config.train.epochs} epochs of {steps_per_epoch} steps, batch {batch} over '
         f'{jax.device_count()} {jax.devices()[0].platform} device(s)'
         + (f' in {jax.process_count()} processes ({feed_kind} feed)'
            if jax.process_count() > 1 else ''))

  def export_meta(step: int, accuracy: float) -> dict[str, Any]:
    return {'model': config.model.name, 'num_classes': num_classes, 'method': method.name,
            'dataset': config.data.name, 'mean': list(data.mean), 'std': list(data.std),
            'image_size': int(image_shape(train_ds)[0]), 'test_accuracy': accuracy,
            'step': step,
            'teacher': teacher_meta['model'] if teacher_meta else None,
            'method_config': method_cfg.to_dict(), **transfer.export_fields(backbone)}

  def save_export(path: str, st: TrainState, accuracy: float) -> None:
    export.save(path, {'params': st.params['student'], 'batch_stats': st.batch_stats['student'],
                       'method': {'params': st.params['method'],
                                  'batch_stats': st.batch_stats['method'],
                                  'state': st.method_state}}, export_meta(int(st.step), accuracy))

  def check_finite(chunks: list[dict[str, np.ndarray]], step_after: int) -> None:
    nonlocal skipped
    try:
      skipped = _check_finite(chunks, step_after, skipped, config.train.max_skipped_steps)
    except NonFiniteLoss:
      ckpts.wait()  # the last good checkpoint may still be being written
      raise
    meta['skipped_steps'] = skipped

  t_start = time.time()
  calls_per_epoch = full_steps // k + (last > 0)
  stop_flag = _SigtermFlag() if jax.process_count() == 1 else _PreemptionSync(
      int(state.step) // steps_per_epoch * calls_per_epoch
      + int(state.step) % steps_per_epoch // k)
  with stop_flag as sigterm:
    for epoch in range(start_epoch, config.train.epochs):
      offset = int(state.step) - epoch * steps_per_epoch
      chunks = epoch_chunks(config.seed, epoch, len(train_ds), batch, k, offset, last)
      progress = _progress(config, epoch, sum(len(c) for c in chunks))
      epoch_metrics: list[dict[str, np.ndarray]] = []
      t_epoch = time.time()
      pending = None
      for inputs in epoch_inputs(train_feed, epoch, chunks):
        state, metrics = train_chunk(state, teacher_vars, *inputs)
        if pending is not None:  # read the previous call while this one runs
          epoch_metrics.append(jax.device_get(pending))
          progress.update(len(pending['loss']))
        pending = metrics
        if sigterm.raised:
          epoch_metrics.append(jax.device_get(pending))
          check_finite(epoch_metrics, int(state.step))
          ckpts.save(int(state.step), state, meta, wait=True)
          progress.close()
          raise Preempted(f'{signal.Signals(getattr(sigterm, "signum", signal.SIGTERM)).name}: '
                          f'saved step {int(state.step)} in {ckpts.directory}; '
                          'run the same command again to resume',
                          getattr(sigterm, 'signum', signal.SIGTERM))
      epoch_metrics.append(jax.device_get(pending))
      progress.update(len(pending['loss']))
      progress.close()
      check_finite(epoch_metrics, int(state.step))
      train_metrics = _epoch_means(epoch_metrics)
      if train_metrics.get('train/skipped_steps'):
        _print(f'kdjax: warning: epoch {epoch + 1} skipped '
               f"{train_metrics['train/skipped_steps']:.0f} step(s) with a non-finite loss or "
               f'gradients ({skipped} of at most {config.train.max_skipped_steps} in this run)')
      seconds = time.time() - t_epoch
      record = {'epoch': epoch + 1, **train_metrics,
                'train/images_per_second': sum(c.size for c in chunks) / seconds,
                'lr': float(schedule(int(state.step) - 1)), **changes_record}
      changes_record = {}
      last_epoch = epoch + 1 == config.train.epochs
      if (epoch + 1) % config.train.eval_every == 0 or last_epoch:
        last_eval = run_eval(state)
        record.update(last_eval)
        headline = next(v for key, v in last_eval.items() if key.startswith('test/accuracy/'))
        if headline > best_acc:
          best_acc = headline
          save_export(best_path, state, best_acc)
      if writer:
        writer.write(int(state.step), record)
      _print(_epoch_line(record, config.train.epochs))
      if (epoch + 1) % config.checkpoint.every == 0 or last_epoch:
        ckpts.save(int(state.step), state, meta)
  ckpts.wait()
  if not last_eval:
    last_eval = run_eval(state)
  headline = next(v for key, v in last_eval.items() if key.startswith('test/accuracy/'))
  save_export(os.path.join(workdir, 'model'), state, headline)
  if writer:
    writer.close()
  ckpts.close()
  plot = plot_curves(workdir) if is_main_process() else None
  summary = {'workdir': workdir, 'mode': config.mode, 'model': config.model.name,
             'method': method.name, 'last_accuracy': headline, 'best_accuracy': max(best_acc, headline),
             **last_eval, 'seconds': time.time() - t_start, 'curves': plot}
  _print(f'kdjax: done. test accuracy last {100 * headline:.2f}% best '
         f'{100 * summary["best_accuracy"]:.2f}%; model in {workdir}/model, curves {plot}')
  return summary


def _to_host(sums: dict[str, jax.Array]) -> dict[str, float]:
  """Fetches eval sums keeping their order (the first head is the headline);
  ``jax.device_get`` on a dict would sort the keys."""
  return {k: float(v) for k, v in sums.items()}


def _progress(config: ml_collections.ConfigDict, epoch: int, total: int):
  from tqdm.auto import tqdm
  return tqdm(total=total, desc=f'epoch {epoch + 1}/{config.train.epochs}', unit='step',
              leave=False, disable=not config.train.progress or not is_main_process(),
              file=sys.stderr)


def _stacked(chunks: list[dict[str, np.ndarray]], key: str) -> np.ndarray:
  return np.concatenate([np.atleast_1d(c[key]) for c in chunks])


def _check_finite(chunks: list[dict[str, np.ndarray]], step_after: int, skipped: int = 0,
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


def _epoch_means(chunks: list[dict[str, np.ndarray]]) -> dict[str, float]:
  """Per-step metrics averaged over the epoch's steps that were not skipped."""
  if 'skipped' not in chunks[0]:
    return {f'train/{key}': float(np.mean(_stacked(chunks, key))) for key in chunks[0]}
  skipped = _stacked(chunks, 'skipped').astype(bool)
  means = {f'train/{key}': float(np.mean(_stacked(chunks, key)[~skipped])) if not skipped.all()
           else float('nan') for key in chunks[0] if key != 'skipped'}
  means['train/skipped_steps'] = float(skipped.sum())
  return means


def _epoch_line(record: dict[str, Any], epochs: int) -> str:
  parts = [f"epoch {record['epoch']}/{epochs}", f"loss {record['train/loss']:.4f}",
           f"train acc {100 * record['train/accuracy']:.2f}%"]
  parts += [f"{k.split('/')[-1]} {100 * v:.2f}%" for k, v in record.items()
            if k.startswith('test/accuracy/')]
  parts.append(f"{record['train/images_per_second']:.0f} img/s")
  return 'kdjax: ' + ', '.join(parts)


def _head_label(meta: dict[str, Any], head: str) -> str:
  """What to call an evaluated head: the plain head ('student' in the eval heads) of an
  export that was not distilled (a teacher, a converted model, a probe) is its model."""
  if head == 'student' and not meta.get('teacher'):
    return 'linear probe' if meta.get('transfer') else meta['model']
  return head


def evaluate_export(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Evaluates an exported model on ``config.evaluate.split`` of ``config.data``."""
  mesh = make_mesh()
  meta, variables = export.load(config.evaluate.checkpoint)
  d = config.data
  ds = streaming_splits(config, (config.evaluate.split,))[0] if d.pipeline == 'streaming' else (
      load_split(d.name, config.evaluate.split, source=d.source, path=d.path,
                 image_size=d.image_size, fake_examples=d.fake_examples,
                 fake_classes=d.fake_classes, seed=config.seed))
  if meta['num_classes'] != ds.num_classes:
    raise ConfigError(f"config key 'evaluate.checkpoint': the model predicts "
                      f"{meta['num_classes']} classes but {d.name} has {ds.num_classes}")
  export.check_variables(meta, variables)
  # the method settings the model was trained with (e.g. CID's temperature), not today's
  base = ml_collections.ConfigDict(meta['method_config']) if 'method_config' in meta else (
      copy.deepcopy(config.method))
  method = methods.resolve(meta.get('method') or 'ce', base)
  model = export.model_from_meta(meta, DTYPES[config.model.dtype])
  # the export's own normalisation: the model was trained with it
  data = DataSpec(tuple(meta.get('mean', ds.mean)), tuple(meta.get('std', ds.std)), 0, False)
  evaluate = build_eval(model, method, ml_collections.FrozenConfigDict(base), data, mesh)
  m = variables.get('method', {}) or {}
  full = replicate({'params': {'student': variables['params'], 'method': m.get('params', {})},
                    'batch_stats': {'student': variables['batch_stats'],
                                    'method': m.get('batch_stats', {})},
                    'method_state': m.get('state', {})}, mesh)
  idx, mask = eval_indices(len(ds), config.train.eval_batch_size)
  feed = make_feed(resolve_feed(config.data.feed, jax.process_count()), ds, mesh,
                   config.data.workers, config.data.prefetch)
  sums = _to_host(evaluate(full, feed.eval_batches(idx, mask)))
  count = float(sums.pop('count'))
  result = {'model': meta['model'], 'split': config.evaluate.split, 'examples': int(count),
            'loss': float(sums.pop('loss')) / count}
  result.update({f'accuracy/{k.split("/", 1)[1]}': float(v) / count for k, v in sums.items()})
  accs = ', '.join(f'{_head_label(meta, k.split("/")[1])} {100 * v:.2f}%'
                   for k, v in result.items() if k.startswith('accuracy/'))
  _print(f"kdjax: {meta['model']} on {d.name}/{config.evaluate.split} "
         f"({int(count)} examples): {accs}")
  return result


def pipeline(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Teacher from labels, then the student distilled from it, then (optionally) the same
  student from labels alone, so the effect of the teacher is measured in one command."""
  stages = {}
  teacher_cfg = copy.deepcopy(config)
  teacher_cfg.mode = 'train'
  teacher_cfg.model.name = config.pipeline.teacher_model
  teacher_cfg.train.epochs = config.pipeline.teacher_epochs
  stages['teacher'] = train(teacher_cfg, os.path.join(workdir, 'teacher'))
  student_cfg = copy.deepcopy(config)
  student_cfg.mode = 'distill'
  student_cfg.teacher.checkpoint = os.path.join(workdir, 'teacher')
  stages['student'] = train(student_cfg, os.path.join(workdir, 'student'))
  if config.pipeline.baseline:
    base_cfg = copy.deepcopy(config)
    base_cfg.mode = 'train'
    stages['baseline'] = train(base_cfg, os.path.join(workdir, 'baseline'))
  _print('kdjax: pipeline summary (test top-1, last epoch / best)')
  for name, s in stages.items():
    _print(f"  {name:9s} {s['model']:12s} {s['method']:6s} "
           f"{100 * s['last_accuracy']:6.2f}% / {100 * s['best_accuracy']:6.2f}%")
  return stages


def run(config: ml_collections.ConfigDict, workdir: str) -> Any:
  if config.mode == 'evaluate':
    return evaluate_export(config)
  if config.mode == 'pipeline':
    return pipeline(config, workdir)
  if config.mode == 'datafree':
    from kdjax.train.datafree import train_datafree  # it builds on this module
    return train_datafree(config, workdir)
  return train(config, workdir)
