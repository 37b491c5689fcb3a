"""The run modes of ``config.mode``, each a short function: it works out the effective config
and the method once, assembles the run (``kdjax.train.assemble``) and hands it to a loop
(``loop.fit``, ``datafree.train_datafree``). Nothing below this module reads
``config.mode``.

  train     ``model.name`` from labels (teachers, baselines)
  distill   ``model.name`` from the frozen ``teacher.checkpoint`` with ``method``
  transfer  a linear probe on the frozen backbone of ``transfer.checkpoint``
  evaluate  ``evaluate.checkpoint`` on ``data`` / ``evaluate.split``
  pipeline  teacher, then distilled student, then the student from labels
  datafree  a student distilled from synthetic images only
"""
from __future__ import annotations

import copy
import os
from typing import Any, Callable

import jax
import ml_collections

from kdjax import methods
from kdjax.data import ArrayDataset, load_split
from kdjax.errors import ConfigError
from kdjax.train import export, loop, transfer
from kdjax.train.assemble import (MethodChoice, accuracies, assemble, configured, labels_only,
                                  load_teacher)
from kdjax.train.batches import eval_indices, last_batch_size
from kdjax.train.feed import make_feed, resolve_feed
from kdjax.train.mesh import make_mesh, replicate
from kdjax.train.metrics import plot_pipeline
from kdjax.train.stream_feed import image_shape, streaming_splits
from kdjax.train.steps import DataSpec, build_eval
from kdjax.train.workdir import locked

Summary = dict[str, Any]


def load_data(config: ml_collections.ConfigDict) -> tuple[ArrayDataset, ArrayDataset]:
  """The train and test splits of ``config.data`` (streamed or in memory)."""
  d = config.data
  if d.pipeline == 'streaming':  # read example by example (kdjax.data.streaming)
    return streaming_splits(config, ('train', 'test'))
  train_ds, test_ds = (load_split(d.name, split, source=d.source, path=d.path,
                                  image_size=d.image_size, fake_examples=d.fake_examples,
                                  fake_classes=d.fake_classes, seed=config.seed)
                       for split in ('train', 'test'))
  return (train_ds.subset(d.train_examples) if d.train_examples else train_ds), test_ds


def fingerprint(config: ml_collections.ConfigDict, mode: str, method_name: str,
                backbone: transfer.Backbone | None = None) -> dict[str, Any]:
  """What must not change between a checkpoint and the run resuming from it."""
  fp = {'mode': mode, 'model': config.model.name, 'method': method_name,
        'data': config.data.name, 'batch_size': config.train.batch_size,
        'seed': config.seed, 'devices': jax.device_count()}
  if not config.data.drop_last:  # another step count per epoch (absent: dropped, as before)
    fp['drop_last'] = False
  if backbone is not None:  # a probe of another backbone is another experiment
    fp['backbone'] = backbone.path
  return fp


@locked  # one run per workdir at a time
def _supervised(config: ml_collections.ConfigDict, workdir: str, mode: str,
                method: MethodChoice, backbone: transfer.Backbone | None = None) -> Summary:
  """A run over the training split with ``method`` (modes train, distill, transfer)."""
  os.makedirs(workdir, exist_ok=True)
  mesh = make_mesh()
  train_ds, test_ds = load_data(config)
  num_classes, batch = train_ds.num_classes, config.train.batch_size
  full_steps = len(train_ds) // batch
  if full_steps == 0:
    raise ConfigError(f"config key 'train.batch_size' = {batch} is larger than the "
                      f"{len(train_ds)} training examples")
  last = last_batch_size(len(train_ds), batch, config.data.drop_last, jax.device_count())
  steps_per_epoch = full_steps + (last > 0)
  teacher = load_teacher(config, num_classes) if method[0].needs_teacher else None
  data = DataSpec(*transfer.normalization(train_ds, backbone), config.data.crop_padding,
                  config.data.flip)
  run = assemble(config, method, num_classes=num_classes, num_train=len(train_ds),
                 image_shape=image_shape(train_ds), data=data,
                 steps_per_epoch=steps_per_epoch, teacher=teacher,
                 train_labels=train_ds.labels, backbone=backbone)
  export_meta = {'model': config.model.name, 'num_classes': num_classes,
                 'method': run.method.name, 'dataset': config.data.name,
                 'mean': list(data.mean), 'std': list(data.std),
                 'image_size': int(image_shape(train_ds)[0]),
                 'teacher': teacher.meta['model'] if teacher else None,
                 'method_config': run.method_config.to_dict(),
                 **transfer.export_fields(backbone)}
  describe = (f'kdjax: {mode} {config.model.name} with {run.method.name} on {config.data.name} '
              f'({len(train_ds)} train / {len(test_ds)} test, {num_classes} classes), '
              f'{config.train.epochs} epochs of {steps_per_epoch} steps, batch {batch} over '
              f'{jax.device_count()} {jax.devices()[0].platform} device(s)')
  return loop.fit(run, config, workdir, train_ds=train_ds, test_ds=test_ds, mesh=mesh,
                  teacher_vars=teacher.variables if teacher else {},
                  fingerprint=fingerprint(config, mode, run.method.name, backbone),
                  export_meta=export_meta, mode=mode, describe=describe)


def train(config: ml_collections.ConfigDict, workdir: str) -> Summary:
  """``model.name`` from labels: plain CE whatever the method section says."""
  return _supervised(config, workdir, 'train', labels_only(config))


def distill(config: ml_collections.ConfigDict, workdir: str) -> Summary:
  return _supervised(config, workdir, 'distill', configured(config))


def transfer_probe(config: ml_collections.ConfigDict, workdir: str) -> Summary:
  """A linear probe (CE on labels) over the frozen backbone of ``transfer.checkpoint``;
  the model is the backbone's architecture (``transfer.run_config``)."""
  backbone = transfer.load_backbone(config)
  config = transfer.run_config(config, backbone)
  return _supervised(config, workdir, 'transfer', labels_only(config), backbone)


def _head_label(meta: dict[str, Any], head: str) -> str:
  """What to call an evaluated head: the plain head ('student' in the eval heads) of an
  export that was not distilled (a teacher, a converted model, a probe) is its model."""
  if head == 'student' and not meta.get('teacher'):
    return 'linear probe' if meta.get('transfer') else meta['model']
  return head


def evaluate(config: ml_collections.ConfigDict, workdir: str = '') -> dict[str, Any]:
  """Evaluates the export ``evaluate.checkpoint`` on ``evaluate.split`` of ``config.data``,
  with the method settings it was trained with (e.g. CID's temperature, KDCI's head)."""
  del workdir  # evaluation writes nothing
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
  base = ml_collections.ConfigDict(meta['method_config']) if 'method_config' in meta else (
      copy.deepcopy(config.method))
  method = methods.resolve(meta.get('method') or 'ce', base)
  model = export.model_from_meta(meta, jax.numpy.dtype(config.model.dtype))
  # the export's own normalisation: the model was trained with it
  data = DataSpec(tuple(meta.get('mean', ds.mean)), tuple(meta.get('std', ds.std)), 0, False)
  evaluator = build_eval(model, method, ml_collections.FrozenConfigDict(base), data, mesh)
  idx, mask = eval_indices(len(ds), config.train.eval_batch_size)
  feed = make_feed(resolve_feed(config.data.feed, jax.process_count()), ds, mesh,
                   config.data.workers, config.data.prefetch)
  sums = evaluator(replicate(export.to_eval_variables(variables), mesh),
                   feed.eval_batches(idx, mask))
  count = int(sums['count'])
  result = {'model': meta['model'], 'split': config.evaluate.split, 'examples': count,
            **accuracies(sums)}
  accs = ', '.join(f'{_head_label(meta, k.split("/")[1])} {100 * v:.2f}%'
                   for k, v in result.items() if k.startswith('accuracy/'))
  loop.say(f"kdjax: {meta['model']} on {d.name}/{config.evaluate.split} "
           f"({count} examples): {accs}")
  return result


def pipeline(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Summary]:
  """Teacher from labels, then the student distilled from it, then (optionally) the same
  student from labels alone, so the effect of the teacher is measured in one command."""
  def stage(mode: str, **changes: Any) -> ml_collections.ConfigDict:
    cfg = copy.deepcopy(config)
    cfg.mode = mode  # each stage's checkpoints record the mode that runs it
    for key, value in changes.items():
      group, name = key.split('__')
      cfg[group][name] = value
    return cfg

  student_data = ({'data__train_examples': config.pipeline.student_examples}
                  if config.pipeline.student_examples else {})
  stages = {'teacher': train(stage('train', model__name=config.pipeline.teacher_model,
                                    train__epochs=config.pipeline.teacher_epochs),
                             os.path.join(workdir, 'teacher'))}
  stages['student'] = distill(stage('distill', **student_data,
                                    teacher__checkpoint=os.path.join(workdir, 'teacher')),
                              os.path.join(workdir, 'student'))
  if config.pipeline.baseline:
    stages['baseline'] = train(stage('train', **student_data), os.path.join(workdir, 'baseline'))
  loop.say('kdjax: pipeline summary (test top-1, last epoch / best)')
  for name, s in stages.items():
    loop.say(f"  {name:9s} {s['model']:12s} {s['method']:6s} "
             f"{100 * s['last_accuracy']:6.2f}% / {100 * s['best_accuracy']:6.2f}%")
  if 'baseline' in stages:
    gain = stages['student']['last_accuracy'] - stages['baseline']['last_accuracy']
    loop.say(f'  distillation vs labels alone: {100 * gain:+.2f} points (last epoch)')
  figure = plot_pipeline(workdir, {name: os.path.join(workdir, name) for name in stages})
  if figure:
    loop.say(f'  curves side by side: {figure}')
  return stages


def datafree(config: ml_collections.ConfigDict, workdir: str) -> Summary:
  from kdjax.train.datafree import train_datafree
  return train_datafree(config, workdir, configured(config))


MODES: dict[str, Callable[[ml_collections.ConfigDict, str], Any]] = {
    'train': train, 'distill': distill, 'transfer': transfer_probe, 'evaluate': evaluate,
    'pipeline': pipeline, 'datafree': datafree}


def run(config: ml_collections.ConfigDict, workdir: str) -> Any:
  """Runs ``config.mode`` (validated by ``kdjax.config.validate``) in ``workdir``."""
  return MODES[config.mode](config, workdir)
