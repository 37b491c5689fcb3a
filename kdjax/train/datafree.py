"""``mode=datafree``: distil a student without its training data (methods.md §5).

A run is epochs of ``ep_steps // kd_steps`` rounds; a round is one compiled synthesis
(``kdjax.datafree``) whose images enter the pool, then ``kd_steps`` ordinary student
steps (the generic jitted step of ``kdjax.train.steps``) on batches gathered from the
pool on the device. Only the teacher's test split is read, for evaluation. The pool,
the synthesizer's state and the student's state are checkpointed together, and every
random choice is a function of (seed, round) or (seed, step), so a resumed run repeats
exactly what an uninterrupted one does.
"""
from __future__ import annotations

import functools
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from kdjax import datafree
from kdjax.data import load_split
from kdjax.datafree.pool import class_histogram, entropy
from kdjax.methods import ModelOutput
from kdjax.methods.kdci import SUFFIX as KDCI_SUFFIX, dictionary_features, rebuild_dictionary
from kdjax.models.generator import create_generator
from kdjax.train import export, visual
from kdjax.train.assemble import MethodChoice, assemble, load_teacher, own_buffers
from kdjax.train.batches import chunk_size, due, steps_per_call
from kdjax.train.checkpoint import Checkpoints
from kdjax.train.guards import check_finite, epoch_means, preempted, stop_flag
from kdjax.train.loop import epoch_line, finish, progress_bar, say, test_evaluation, warn
from kdjax.train.mesh import is_main_process, make_mesh, replicate
from kdjax.train.metrics import MetricWriter, open_writer
from kdjax.train.steps import DataSpec, build_train_chunk
from kdjax.train.workdir import check_resume, config_record, locked, record_changes


class Schedule:
  """Where each round and student step of a data-free run falls."""

  def __init__(self, config: ml_collections.ConfigDict, fresh_pool: bool, syn_batch: int):
    d = config.datafree
    self.kd_steps = d.kd_steps or d.ep_steps
    self.rounds_per_epoch = d.ep_steps // self.kd_steps
    self.warmup_rounds = d.warmup * self.rounds_per_epoch
    self.epochs = config.train.epochs
    self.fresh_pool = fresh_pool
    self.syn_batch = syn_batch
    self.batch = config.train.batch_size
    self.seed = config.seed
    self.capacity = self.kd_steps * syn_batch if fresh_pool else d.pool_capacity

  @property
  def student_epochs(self) -> int:
    return self.epochs - self.warmup_rounds // self.rounds_per_epoch

  @property
  def steps_per_epoch(self) -> int:
    return self.rounds_per_epoch * self.kd_steps

  def steps_before(self, rnd: int) -> int:
    """Student steps taken before round ``rnd`` (warm-up rounds take none)."""
    return self.kd_steps * max(0, rnd - self.warmup_rounds)

  def pool_count(self, rnd: int) -> int:
    """Images in the pool once round ``rnd`` has added its own."""
    return self.capacity if self.fresh_pool else min(self.capacity, (rnd + 1) * self.syn_batch)

  def student_indices(self, rnd: int) -> np.ndarray:
    """(kd_steps, batch) pool rows for round ``rnd``: uniform over the filled rows (the
    reference shuffles its whole pool), or each fresh image once (DAFL)."""
    if self.fresh_pool:
      return np.arange(self.capacity, dtype=np.int32).reshape(self.kd_steps, -1)[:, :self.batch]
    rng = np.random.default_rng([self.seed, 7919, rnd])
    return rng.integers(0, self.pool_count(rnd), (self.kd_steps, self.batch)).astype(np.int32)

  def resume_round(self, rounds_done: int, student_step: int) -> int:
    """The first round with work left: its synthesis or the rest of its student steps."""
    if rounds_done > 0 and student_step < self.steps_before(rounds_done):
      return rounds_done - 1
    return rounds_done


def fingerprint(config: ml_collections.ConfigDict) -> dict[str, Any]:
  d = config.datafree
  return {'mode': 'datafree', 'model': config.model.name, 'method': config.method.name,
          'synthesizer': d.method, 'teacher': export.resolve(config.teacher.checkpoint),
          'data': config.data.name, 'batch_size': config.train.batch_size,
          'synthesis_batch_size': d.synthesis_batch_size, 'kd_steps': d.kd_steps,
          'ep_steps': d.ep_steps, 'warmup': d.warmup, 'pool_capacity': d.pool_capacity,
          'seed': config.seed, 'devices': jax.device_count()}


@locked  # one run per workdir at a time
def train_datafree(config: ml_collections.ConfigDict, workdir: str, method: MethodChoice
                   ) -> dict[str, Any]:
  """Runs (or resumes) a data-free distillation with the student ``method`` in
  ``workdir``."""
  os.makedirs(workdir, exist_ok=True)
  mesh = make_mesh()
  d = config.datafree
  synth = datafree.get_synthesizer(d.method)
  data = config.data
  test_ds = load_split(data.name, d.eval_split, source=data.source, path=data.path,
                       image_size=data.image_size, fake_examples=data.fake_examples,
                       fake_classes=data.fake_classes, seed=config.seed)
  num_classes = test_ds.num_classes
  teacher = load_teacher(config, num_classes)
  teacher_vars, teacher_meta = teacher.variables, teacher.meta
  # the teacher's own input normalisation: synthesis and evaluation both feed the teacher
  mean = tuple(teacher_meta.get('mean') or test_ds.mean)
  std = tuple(teacher_meta.get('std') or test_ds.std)
  image_shape = tuple(int(s) for s in test_ds.images.shape[1:])
  syn_batch = d.synthesis_batch_size or config.train.batch_size
  sched = Schedule(config, synth.fresh_pool, syn_batch)
  spec = DataSpec(mean, std, config.data.crop_padding, config.data.flip)
  kdci_on = method[0].name.endswith(KDCI_SUFFIX)
  # num_train = 0: KDCI keeps no per-example memory here, its dictionary comes from the
  # pool; the student's optimizer counts only the epochs it trains (after the warm-up)
  run = assemble(config, method, num_classes=num_classes,
                 num_train=0 if kdci_on else sched.capacity, image_shape=image_shape,
                 data=spec, steps_per_epoch=sched.steps_per_epoch,
                 epochs=sched.student_epochs, teacher=teacher)
  student, method, method_cfg = run.student, run.method, run.method_config
  generator = create_generator(d.nz, d.ngf, image_shape[0], image_shape[2])
  ctx = datafree.SynthContext(
      teacher=teacher.model, student=student, generator=generator, num_classes=num_classes,
      image_shape=image_shape, mean=mean, std=std, batch_size=syn_batch,
      rounds_per_epoch=sched.rounds_per_epoch,
      config=ml_collections.FrozenConfigDict(d), mesh=mesh)
  base_key = jax.random.PRNGKey(config.seed)
  synth_key, round_key = jax.random.split(jax.random.fold_in(base_key, 17))
  feature_dim = _pool_feature_dim(config, teacher.model, teacher_vars, image_shape)
  run_state = {  # run.state already has a buffer per leaf; the synthesizer's may not
      'train': run.state,
      **own_buffers({
          'synth': synth.init(synth_key, teacher_vars, ctx),
          'pool': datafree.init_pool(sched.capacity, image_shape, num_classes, feature_dim),
          'rounds': jnp.zeros((), jnp.int32)})}
  run_state = replicate(run_state, mesh)
  teacher_vars = replicate(teacher_vars, mesh)

  ckpts = Checkpoints(workdir, config.checkpoint.keep, warn)
  fp = fingerprint(config)
  resume_changes = {}
  if ckpts.latest_step() is not None:
    # a refused config change stops before any state is read; epochs done = rounds done
    # (the checkpoint step counts student steps + rounds, which does not give epochs)
    run_state, restored_meta = ckpts.restore(
        run_state, fp, check=lambda m, step: check_resume(m.get('config'), config))
    resume_changes = check_resume(restored_meta.get('config'), config,
                                  int(run_state['rounds']) // sched.rounds_per_epoch)
    say(f'kdjax: resuming {workdir} at round {int(run_state["rounds"])}, student step '
        f'{int(run_state["train"].step)}')

  synthesize = datafree.build_synthesize(
      synth, ctx, ctx.method_config.g_steps,
      d.steps_per_call or (1 if jax.devices()[0].platform == 'cpu' else 0))
  add_to_pool = jax.jit(lambda pool, images, t_vars: _add_to_pool(
      pool, images, t_vars, teacher.model, mean, std, feature_dim), donate_argnums=(0,))
  rebuild = jax.jit(functools.partial(_rebuild_dictionary, method_cfg=method_cfg),
                    donate_argnums=(0,)) if kdci_on else None
  k = chunk_size(sched.kd_steps, steps_per_call(config.train.steps_per_call))
  train_chunk = build_train_chunk(run.train_step(mesh, config.train.max_skipped_steps > 0),
                                  mesh, k, gather=True)
  run_eval = test_evaluation(run, mesh, test_ds, config)

  writer = open_writer(workdir, is_main_process())
  exports = export.RunExports(workdir, {'model': config.model.name, 'num_classes': num_classes, 'method': method.name,
                 'dataset': config.data.name, 'mean': list(mean), 'std': list(std),
                 'image_size': image_shape[0], 'teacher': teacher_meta['model'],
                 'datafree': d.method, 'method_config': method_cfg.to_dict()})
  ckpt_meta = {'fingerprint': fp, 'config': config_record(config)}
  changes_record = record_changes(resume_changes, say)  # into the next epoch's record
  skipped = 0
  start = sched.resume_round(int(run_state['rounds']), int(run_state['train'].step))
  say(f'kdjax: datafree {d.method}: {teacher_meta["model"]} -> {config.model.name} on '
      f'{config.data.name} (test split only, {len(test_ds)} images), {sched.epochs} epochs '
      f'x {sched.rounds_per_epoch} round(s) of {syn_batch} synthesised images + '
      f'{sched.kd_steps} student steps (batch {config.train.batch_size}), warm-up '
      f'{d.warmup} epoch(s), pool {sched.capacity}, {jax.device_count()} '
      f'{jax.devices()[0].platform} device(s)')
  t_start = time.time()
  last_eval: dict[str, float] = {}
  with stop_flag(start) as sigterm:
    for epoch in range(start // sched.rounds_per_epoch, sched.epochs):
      epoch_student: list[dict[str, np.ndarray]] = []
      epoch_synth: list[dict[str, float]] = []
      synth_seconds, student_seconds, last_images = 0.0, 0.0, None
      first = max(start, epoch * sched.rounds_per_epoch)
      for rnd in range(first, (epoch + 1) * sched.rounds_per_epoch):
        if int(run_state['rounds']) <= rnd:
          t0 = time.time()
          syn_state, images, syn_metrics = synthesize(
              run_state['synth'], teacher_vars, _student_vars(run_state['train']),
              jax.random.fold_in(round_key, rnd), jnp.asarray(rnd, jnp.int32))
          pool = add_to_pool(run_state['pool'], images, teacher_vars)
          run_state = {**run_state, 'synth': syn_state, 'pool': pool,
                       'rounds': jnp.asarray(rnd + 1, jnp.int32)}
          if rebuild is not None and rnd % max(config.method.kdci.dict_every, 1) == 0:
            train_state = run_state['train']
            run_state = {**run_state, 'train': train_state.replace(method_state=rebuild(
                train_state.method_state, run_state['pool'],
                jax.random.fold_in(jax.random.fold_in(round_key, rnd), 0x6B6463)))}
          epoch_synth.append({k_: float(v) for k_, v in syn_metrics.items()})
          last_images = images
          synth_seconds += time.time() - t0
        if rnd >= sched.warmup_rounds:
          t0 = time.time()
          run_state, chunks = _student_phase(run_state, sched, rnd, k, train_chunk,
                                             teacher_vars, sigterm, config, epoch)
          epoch_student.extend(chunks)
          student_seconds += time.time() - t0
          if chunks:
            skipped = check_finite(chunks, int(run_state['train'].step), skipped,
                                    config.train.max_skipped_steps)
        if sigterm.raised:
          ckpts.save(int(run_state['train'].step) + int(run_state['rounds']), run_state,
                     ckpt_meta, wait=True)
          raise preempted(sigterm, f'round {int(run_state["rounds"])}', ckpts.directory)
      record: dict[str, Any] = {'epoch': epoch + 1, 'rounds': int(run_state['rounds']),
                                **changes_record}
      changes_record = {}
      if epoch_student:
        record.update(epoch_means(epoch_student))
        record['train/images_per_second'] = (len(epoch_student) * k * config.train.batch_size
                                             / max(student_seconds, 1e-9))
        record['lr'] = float(run.schedule(max(int(run_state['train'].step) - 1, 0)))
      if epoch_synth:
        record.update({f'synth/{key}': float(np.mean([m[key] for m in epoch_synth]))
                       for key in epoch_synth[0]})
        record['synth/images_per_second'] = (len(epoch_synth) * len(last_images)
                                             / max(synth_seconds, 1e-9))
      hist = np.asarray(class_histogram(run_state['pool'], num_classes))
      record.update({'pool/size': sched.pool_count(int(run_state['rounds']) - 1),
                     'pool/class_entropy': float(entropy(jnp.asarray(hist))),
                     'pool/max_class_fraction': float(hist.max())})
      if due(epoch + 1, config.train.eval_every, sched.epochs):
        last_eval = run_eval(run_state['train'])
        record.update(last_eval)
        exports.offer_best(run_state['train'], last_eval)
      writer.write(int(run_state['train'].step), record)
      if isinstance(writer, MetricWriter):  # pictures from process 0 only
        prior = (np.asarray(run_state['train'].method_state['kdci']['prior'])
                 if kdci_on else None)
        _draw(workdir, writer, epoch + 1, last_images, hist, prior,
              int(run_state['train'].step), config.datafree.grid)
      say(_datafree_line(record, sched.epochs))
      if due(epoch + 1, config.checkpoint.every, sched.epochs):
        ckpts.save(int(run_state['train'].step) + int(run_state['rounds']), run_state,
                   ckpt_meta)
  return finish(workdir, exports, run_state['train'], last_eval or run_eval(run_state['train']),
                writer, ckpts, {'mode': 'datafree', 'synthesizer': d.method,
                                'model': config.model.name, 'method': method.name}, t_start)


def _student_vars(state) -> dict[str, Any]:
  return {'params': state.params['student'], 'batch_stats': state.batch_stats['student']}


def _pool_feature_dim(config, teacher, teacher_vars, image_shape) -> int:
  """Width of the teacher features the pool keeps: the penultimate feature when a method
  builds a dictionary from it (KDCI), else none."""
  k = config.method.kdci
  if not k.enabled or k.feature != 'penultimate':
    return 0
  out = jax.eval_shape(lambda v, x: teacher.apply(v, x, train=False), teacher_vars,
                       jax.ShapeDtypeStruct((1,) + tuple(image_shape), jnp.float32))
  return int(out[1][-1].shape[-1])


def _add_to_pool(pool, images01, teacher_vars, teacher, mean, std, feature_dim):
  """Quantises a round's images as the reference's PNG pool does and stores them with the
  teacher's logits (and features) on the stored pixels."""
  u8 = datafree.to_uint8(images01)
  x = (u8.astype(jnp.float32) / 255.0 - jnp.asarray(mean)) / jnp.asarray(std)
  logits, feats = teacher.apply(teacher_vars, x, train=False)
  features = jax.lax.stop_gradient(feats[-1]) if feature_dim else None
  return datafree.add(pool, u8, jax.lax.stop_gradient(logits), features)


def _student_phase(run_state, sched: Schedule, rnd: int, k: int, train_chunk, teacher_vars,
                   sigterm, config, epoch: int):
  """The student steps of round ``rnd`` still to do, ``k`` per call; stops early (state
  consistent) when SIGTERM arrives."""
  done = int(run_state['train'].step) - sched.steps_before(rnd)
  idx = sched.student_indices(rnd)[done:]
  if not len(idx):
    return run_state, []
  chunks, pending, state = [], None, run_state['train']
  pool = run_state['pool']
  progress = progress_bar(config, epoch, len(idx))
  for c in idx.reshape(-1, k, idx.shape[-1]):
    state, metrics = train_chunk(state, teacher_vars, pool.images, pool.labels, jnp.asarray(c))
    if pending is not None:
      chunks.append(jax.device_get(pending))
      progress.update(k)
    pending = metrics
    if sigterm.raised:
      break
  chunks.append(jax.device_get(pending))
  progress.update(k)
  progress.close()
  return {**run_state, 'train': state}, chunks


def _rebuild_dictionary(method_state, pool, key, method_cfg):
  """KDCI's confounder dictionary from the teacher's features of the pool's images."""
  feats = dictionary_features(ModelOutput(pool.logits, [pool.features]), method_cfg)
  return rebuild_dictionary(method_state, feats, datafree.valid_mask(pool), key, method_cfg.kdci)


def _draw(workdir: str, writer: MetricWriter, epoch: int, images, hist: np.ndarray,
          prior: np.ndarray | None, step: int, grid: int) -> None:
  """The epoch's last synthetic batch as a PNG grid (workdir and TensorBoard), the pool's
  class histogram and, with KDCI, its dictionary's prior (prototype proportions)."""
  if images is not None and grid:
    u8 = np.asarray(datafree.to_uint8(images[:grid]))
    visual.save_grid(os.path.join(workdir, 'synthetic', f'epoch_{epoch:04d}.png'), u8)
    writer.add_image('synthetic', visual.image_grid(u8), step)
  writer.add_histogram('pool/classes', hist, step)
  panels = {'pool: teacher classes': hist}
  if prior is not None:
    writer.add_histogram('kdci/prior', prior, step)
    panels['KDCI prior P(z_i), sorted'] = np.sort(prior)[::-1]
  visual.plot_distributions(os.path.join(workdir, 'synthetic', f'distributions_{epoch:04d}.png'),
                            panels, f'epoch {epoch}')


def _datafree_line(record: dict[str, Any], epochs: int) -> str:
  if 'train/loss' in record:
    line = epoch_line(record, epochs)
  else:
    line = f"kdjax: epoch {record['epoch']}/{epochs} (warm-up: synthesis only)" + ''.join(
        f", {k.split('/')[-1]} {100 * v:.2f}%" for k, v in record.items()
        if k.startswith('test/accuracy/'))
  extra = [f"pool {record['pool/size']}", f"class entropy {record['pool/class_entropy']:.2f}"]
  if 'synth/loss' in record:
    extra.append(f"synth loss {record['synth/loss']:.3f}")
  if 'synth/images_per_second' in record:
    extra.append(f"{record['synth/images_per_second']:.1f} synth img/s")
  return line + ', ' + ', '.join(extra)
