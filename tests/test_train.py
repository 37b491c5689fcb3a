"""The training engine: compile-once steps, device-count invariance, resume, export."""
from __future__ import annotations

import json
import os
import signal

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import REPO, signal_after_first_epoch, stop_after, tiny_config
from kdjax import methods
from kdjax.data import load_split
from kdjax.models import create_model
from kdjax import errors
from kdjax.train import batches, export, guards, modes
from kdjax.train.mesh import make_mesh, replicate
from kdjax.train.state import TrainState, learning_rate_schedule, make_optimizer
from kdjax.train.steps import DataSpec, build_train_chunk, build_train_step


def _setup(mesh, method_name='ce', teacher=None):
  cfg = tiny_config()
  ds = load_split('fake', 'train', source='fake', fake_examples=64, fake_classes=4)
  model = create_model('resnet8', ds.num_classes)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 3)))
  method = methods.get_method(method_name)
  mcfg = ml_collections.FrozenConfigDict(cfg.method)
  params = {'student': variables['params'], 'method': {}}
  tx = make_optimizer(cfg.optim, learning_rate_schedule(cfg.optim, 2, 2),
                      jax.tree.map(lambda _: True, params))
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     batch_stats={'student': variables['batch_stats'], 'method': {}},
                     opt_state=tx.init(params), method_state={}, rng=jax.random.PRNGKey(1))
  data = DataSpec(ds.mean, ds.std, 2, True)
  step = build_train_step(model, teacher, method, mcfg, tx, data, 2, mesh)
  return ds, replicate(state, mesh), step


def test_train_step_compiles_once():
  mesh = make_mesh()
  ds, state, step = _setup(mesh)
  counted = chex.assert_max_traces(step, n=1)
  chunk = build_train_chunk(counted, mesh, 1)
  images, labels = replicate(ds.images, mesh), replicate(ds.labels, mesh)
  for i in range(4):
    idx = np.arange(i * 16, (i + 1) * 16, dtype=np.int32)[None]
    state, metrics = chunk(state, {}, images, labels, idx)
  chex.assert_shape(metrics['loss'], (1,))
  assert int(state.step) == 4


@pytest.mark.parametrize('steps_per_call', [1, 2])
def test_one_and_eight_devices_agree(steps_per_call):
  assert jax.device_count() == 8, 'conftest sets 8 simulated CPU devices'
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = make_mesh(devices)
    ds, state, step = _setup(mesh)
    chunk = build_train_chunk(step, mesh, steps_per_call)
    images, labels = replicate(ds.images, mesh), replicate(ds.labels, mesh)
    idx = np.arange(64, dtype=np.int32).reshape(4 // steps_per_call, steps_per_call, 16)
    for c in idx:
      state, metrics = chunk(state, {}, images, labels, c)
    results.append((jax.device_get(state.params), jax.device_get(state.batch_stats),
                    jax.device_get(metrics)))
  chex.assert_trees_all_close(results[0], results[1], rtol=2e-4, atol=2e-5)


def test_epoch_indices_are_a_seeded_permutation():
  a = batches.epoch_indices(0, 3, 100, 16)
  chex.assert_shape(a, (6, 16))
  assert len(set(a.ravel().tolist())) == 96
  np.testing.assert_array_equal(a, batches.epoch_indices(0, 3, 100, 16))
  assert not np.array_equal(a, batches.epoch_indices(0, 4, 100, 16))
  assert not np.array_equal(a, batches.epoch_indices(1, 3, 100, 16))


def test_last_partial_batch_is_kept_and_splits_over_the_devices():
  """RepDistiller / CID keep the last partial batch (782 steps per CIFAR-100 epoch, the
  last of 16); ICD drops it; a batch must split evenly over the devices."""
  assert batches.last_batch_size(50000, 64, False, 8) == 16
  assert batches.last_batch_size(50000, 64, True, 8) == 0
  assert batches.last_batch_size(100, 16, False, 8) == 0    # 4 left over, fewer than 8 devices
  assert batches.last_batch_size(100, 16, False, 1) == 4
  assert batches.last_batch_size(110, 16, False, 8) == 8    # 14 trimmed to 8
  chunks = batches.epoch_chunks(0, 3, 110, 16, k=2, offset=0, last=8)
  assert [c.shape for c in chunks] == [(2, 16)] * 3 + [(1, 8)]
  rows = np.concatenate([c.ravel() for c in chunks])
  perm = np.random.default_rng([0, 3]).permutation(110)
  np.testing.assert_array_equal(rows, perm[:104])  # one permutation, no repeats
  resumed = batches.epoch_chunks(0, 3, 110, 16, k=2, offset=6, last=8)  # only the partial left
  assert len(resumed) == 1 and np.array_equal(resumed[0], chunks[-1])


def test_run_takes_the_partial_batch_step(tmp_path):
  """272 examples, batch 32: 8 full steps and one of 16 (on 8 devices) per epoch."""
  kept = modes.run(tiny_config(data__fake_examples=272, train__epochs=1), str(tmp_path / 'a'))
  dropped = modes.run(tiny_config(data__fake_examples=272, train__epochs=1,
                                   data__drop_last=True), str(tmp_path / 'b'))
  assert export.read_meta(kept['workdir'])['step'] == 9
  assert export.read_meta(dropped['workdir'])['step'] == 8


def test_eval_indices_count_every_example_once():
  idx, mask = batches.eval_indices(10, 4)
  chex.assert_shape(idx, (3, 4))
  assert mask.sum() == 10
  np.testing.assert_array_equal(np.sort(idx[mask > 0]), np.arange(10))


def test_chunk_size_divides_the_epoch():
  assert batches.chunk_size(781, 100) == 71
  assert batches.chunk_size(22, 100) == 22
  assert batches.chunk_size(22, 1) == 1
  assert batches.chunk_size(13, 5) == 1


def _read(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def test_training_learns_and_writes_everything(tmp_path):
  workdir = str(tmp_path / 'run')
  summary = modes.run(tiny_config(train__epochs=4), workdir)
  # 4 balanced classes: chance is 25%
  assert summary['last_accuracy'] > 0.8, summary
  records = _read(workdir)
  assert [r['epoch'] for r in records] == [1, 2, 3, 4]
  assert records[-1]['train/loss'] < records[0]['train/loss']
  assert os.listdir(os.path.join(workdir, 'tensorboard'))
  assert os.path.getsize(os.path.join(workdir, 'curves.png')) > 1000
  meta = export.read_meta(workdir)
  assert meta['model'] == 'resnet8' and meta['num_classes'] == 4
  assert abs(meta['test_accuracy'] - summary['last_accuracy']) < 1e-9
  # the export evaluates to the same number through mode=evaluate
  cfg = tiny_config(mode='evaluate', evaluate__checkpoint=workdir)
  result = modes.evaluate(cfg)
  assert result['examples'] == len(load_split('fake', 'test', source='fake',
                                              fake_examples=256, fake_classes=4))
  assert abs(result['accuracy/student'] - summary['last_accuracy']) < 1e-6


def test_distillation_beats_chance(fake_teacher, tmp_path):
  summary = modes.run(tiny_config(mode='distill', teacher__checkpoint=fake_teacher,
                                   train__epochs=4), str(tmp_path))
  assert summary['last_accuracy'] > 0.6, summary
  assert export.read_meta(str(tmp_path))['teacher'] == 'resnet8'


def test_exports_record_every_head_and_curves_plot_test_accuracy(fake_teacher, tmp_path):
  """KD+KDCI evaluates two heads: both in the export's metadata, both in the curves."""
  from kdjax.train import metrics
  c = tiny_config(mode='distill', teacher__checkpoint=fake_teacher, train__epochs=1,
                  method__kdci__enabled=True, method__kdci__num_prototypes=4)
  summary = modes.run(c, str(tmp_path))
  meta = export.read_meta(str(tmp_path))
  assert set(meta['test_accuracies']) == {'kdci', 'student'}
  assert meta['test_accuracies']['kdci'] == meta['test_accuracy'] == summary['last_accuracy']
  assert meta['test_accuracies']['student'] == summary['test/accuracy/student']
  _, rows = metrics._by_epoch(str(tmp_path))
  keys = metrics._accuracy_keys(rows)  # the test heads first, the headline leading
  assert keys[:2] == ['test/accuracy/kdci', 'test/accuracy/student']
  assert set(keys[2:]) == {'train/accuracy', 'train/kdci/accuracy'}


def test_pipeline_gives_the_student_its_examples_and_reports_the_gain(tmp_path, capsys):
  c = tiny_config(mode='pipeline', train__epochs=1, pipeline__teacher_model='resnet8',
                  pipeline__teacher_epochs=1, pipeline__student_examples=64)
  stages = modes.run(c, str(tmp_path))
  out = capsys.readouterr().out
  assert '(256 train / 256 test' in out and out.count('(64 train / 256 test') == 2
  gain = stages['student']['last_accuracy'] - stages['baseline']['last_accuracy']
  assert f'distillation vs labels alone: {100 * gain:+.2f} points' in out
  assert os.path.getsize(os.path.join(str(tmp_path), 'pipeline.png')) > 1000


def test_preempted_run_resumes_to_identical_parameters(tmp_path, monkeypatch):
  cfg = tiny_config(train__epochs=3)
  straight = str(tmp_path / 'straight')
  modes.run(cfg, straight)
  interrupted = str(tmp_path / 'interrupted')
  with monkeypatch.context() as m:
    m.setattr(guards, 'StopFlag', stop_after(11))  # raised at the 12th step: mid-epoch 2
    with pytest.raises(errors.Preempted, match='saved step 12'):
      modes.run(cfg, interrupted)
  modes.run(cfg, interrupted)
  _, a = export.load(straight)
  _, b = export.load(interrupted)
  chex.assert_trees_all_equal(a, b)
  assert [r['epoch'] for r in _read(interrupted)] == [1, 2, 3]


def test_workdir_of_another_experiment_is_refused(tmp_path):
  from kdjax.train.checkpoint import CheckpointError
  workdir = str(tmp_path)
  modes.run(tiny_config(train__epochs=1), workdir)
  with pytest.raises(CheckpointError, match=r'another experiment \(model'):
    modes.run(tiny_config(train__epochs=2, model__name='resnet14'), workdir)


@pytest.mark.parametrize('nesterov', [False, True])
def test_optimizer_is_torch_sgd_with_coupled_decay(nesterov):
  """torch.optim.SGD: g += wd*p; buf = m*buf + g; step = g + m*buf (nesterov) or buf."""
  optim = ml_collections.ConfigDict(dict(lr=0.1, momentum=0.9, nesterov=nesterov,
                                         weight_decay=5e-4, schedule='multistep',
                                         milestones=(1,), decay_rate=0.1))
  schedule = learning_rate_schedule(optim, steps_per_epoch=2, epochs=3)
  tx = make_optimizer(optim, schedule, {'w': True, 'b': False})
  rng = np.random.default_rng(0)
  params = {'w': rng.normal(size=3).astype(np.float32), 'b': rng.normal(size=2).astype(np.float32)}
  opt_state = tx.init(params)
  ref = {k: v.copy() for k, v in params.items()}
  buf = {k: np.zeros_like(v) for k, v in params.items()}
  for step in range(4):
    grads = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}
    updates, opt_state = tx.update(grads, opt_state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
    lr = 0.1 if step < 2 else 0.01  # milestone at epoch 1 = step 2
    for k in ref:
      g = grads[k] + (5e-4 * ref[k] if k == 'w' else 0)
      buf[k] = 0.9 * buf[k] + g
      ref[k] = ref[k] - lr * (g + 0.9 * buf[k] if nesterov else buf[k])
  chex.assert_trees_all_close(params, ref, rtol=1e-6, atol=1e-7)


def test_bfloat16_compute_trains(tmp_path):
  summary = modes.run(tiny_config(model__dtype='bfloat16', train__epochs=3), str(tmp_path))
  assert summary['last_accuracy'] > 0.5, summary
  _, variables = export.load(str(tmp_path))
  assert variables['params']['conv1']['kernel'].dtype == np.float32


def test_sigterm_saves_and_the_same_command_resumes(tmp_path):
  """A real SIGTERM to the CLI: state saved, exit 143, the rerun continues from it."""
  import subprocess
  code, err, cmd, env = signal_after_first_epoch(str(tmp_path), signal.SIGTERM, 240)
  assert code == 143, err
  saved = int(err.split('SIGTERM: saved step ')[1].split()[0])
  assert saved >= 8  # at least the first epoch (8 steps) was done
  resumed = subprocess.run(cmd + ['--config.train.epochs=2'], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=300)
  # epochs may change on resume: it is not part of the experiment's fingerprint
  assert resumed.returncode == 0, resumed.stderr
  assert f'resuming {tmp_path} from step {saved}' in resumed.stdout
