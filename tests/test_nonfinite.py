"""Non-finite losses: stop at the first one naming the step and the loss terms, keeping
the last good checkpoint; or, with train.max_skipped_steps, skip such steps inside the
jitted step up to that bound."""
from __future__ import annotations

import dataclasses
import json
import os

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import tiny_config
from kdjax.data import load_split
from kdjax import errors
from kdjax.train import assemble, batches, modes
from kdjax.train.checkpoint import Checkpoints
from kdjax.train.mesh import make_mesh, replicate
from kdjax.train.steps import DataSpec, build_train_step

POISON = 5  # the training example whose batches get a NaN loss
STEPS_PER_EPOCH = 8  # tiny_config: 256 examples, batch 32


def _poisoned(method, from_epoch: int):
  """``method`` whose loss (and so every gradient) is NaN on batches holding POISON."""
  def loss(vars, student, teacher, batch, rng, epoch, config):
    out = method.loss(vars, student, teacher, batch, rng, epoch, config)
    hit = jnp.any(batch.index == POISON) & (epoch >= from_epoch)
    return out._replace(loss=out.loss * jnp.where(hit, jnp.nan, 1.0))
  return dataclasses.replace(method, loss=loss)


@pytest.fixture
def poison(monkeypatch):
  def apply(from_epoch: int):
    real = modes.labels_only  # tiny_config trains from labels
    monkeypatch.setattr(modes, 'labels_only', lambda c: (
        _poisoned(real(c)[0], from_epoch), real(c)[1]))
  return apply


def _poisoned_step(epoch: int) -> int:
  """The 1-based step of ``epoch`` (0-based) whose batch holds POISON."""
  rows = batches.epoch_indices(0, epoch, 256, 32)
  return epoch * STEPS_PER_EPOCH + int(np.argwhere(rows == POISON)[0][0]) + 1


@pytest.mark.slow
def test_first_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, poison):
  poison(from_epoch=1)
  with pytest.raises(errors.NonFiniteLoss) as e:
    modes.run(tiny_config(train__epochs=3), str(tmp_path))
  message = str(e.value)
  assert message.startswith(f'non-finite loss at step {_poisoned_step(1)} (terms of that step: ')
  assert "'loss': nan" in message and "'ce': " in message and "'accuracy': " in message
  assert 'the last good checkpoint is kept' in message
  ckpts = Checkpoints(str(tmp_path), 2, print)
  assert ckpts.manager.all_steps() == [STEPS_PER_EPOCH]
  import orbax.checkpoint as ocp
  saved = ckpts.manager.restore(STEPS_PER_EPOCH, args=ocp.args.Composite(
      state=ocp.args.StandardRestore()))['state']
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(saved['params']))
  ckpts.close()


@pytest.mark.slow
def test_skipped_steps_over_the_bound_stop_the_run(tmp_path, poison):
  poison(from_epoch=0)  # one poisoned step per epoch
  with pytest.raises(errors.NonFiniteLoss) as e:
    modes.run(tiny_config(train__epochs=2, train__max_skipped_steps=1), str(tmp_path))
  assert str(e.value).startswith(f'non-finite loss or gradients at step {_poisoned_step(1)} ')
  assert '2 steps skipped, more than train.max_skipped_steps=1' in str(e.value)


@pytest.mark.slow
def test_skipped_steps_within_the_bound_are_counted_and_training_goes_on(tmp_path, poison,
                                                                          capfd):
  poison(from_epoch=0)
  summary = modes.run(tiny_config(train__epochs=2, train__max_skipped_steps=2), str(tmp_path))
  assert summary['last_accuracy'] > 0.35, summary  # chance: 0.25
  with open(os.path.join(str(tmp_path), 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  assert [r['train/skipped_steps'] for r in records] == [1, 1]
  assert all(np.isfinite(r['train/loss']) for r in records)
  assert records[1]['train/loss'] < records[0]['train/loss']
  out = capfd.readouterr().out
  assert 'epoch 2 skipped 1 step(s) with a non-finite loss or gradients (2 of at most 2' in out


@pytest.fixture(scope='module')
def one_step():
  """``run(skip, idx) -> (state before, state after, metrics)`` of one jitted step."""
  config = tiny_config()
  method, mcfg = assemble.labels_only(config)
  ds = load_split('fake', 'train', source='fake', fake_examples=64, fake_classes=4)
  setup = assemble.assemble(config, (method, mcfg), num_classes=4, num_train=len(ds),
                            image_shape=ds.images.shape[1:],
                            data=DataSpec(ds.mean, ds.std, 2, True), steps_per_epoch=2)
  mesh = make_mesh()
  images, labels = replicate(ds.images, mesh), replicate(ds.labels, mesh)
  state = replicate(setup.state, mesh)
  steps = {skip: jax.jit(build_train_step(
      setup.student, None, _poisoned(method, 0), mcfg, setup.tx,
      DataSpec(ds.mean, ds.std, 2, True), 2, mesh, skip_nonfinite=skip)) for skip in (False, True)}

  def run(skip: bool, idx: np.ndarray):
    idx = jnp.asarray(idx)
    new, metrics = steps[skip](state, {}, images[idx], labels[idx], idx)
    return jax.device_get(state), jax.device_get(new), jax.device_get(metrics)
  return run


def test_skipping_step_keeps_every_variable_but_counts_the_step(one_step):
  old, new, metrics = one_step(True, np.arange(16, dtype=np.int32))  # holds POISON
  assert int(metrics['skipped']) == 1 and not np.isfinite(metrics['loss'])
  assert int(new.step) == int(old.step) + 1
  for name in ('params', 'opt_state', 'batch_stats', 'method_state', 'rng'):
    chex.assert_trees_all_equal(getattr(new, name), getattr(old, name))


def test_skip_mode_changes_nothing_on_finite_steps(one_step):
  idx = np.arange(16, 32, dtype=np.int32)  # no POISON
  _, plain, _ = one_step(False, idx)
  old, skipping, metrics = one_step(True, idx)
  assert int(metrics['skipped']) == 0
  # the same update; XLA may fuse the selected program differently (last-bit differences)
  chex.assert_trees_all_close(skipping, plain, rtol=1e-6, atol=1e-7)
  assert not np.array_equal(skipping.params['student']['conv1']['kernel'],
                            old.params['student']['conv1']['kernel'])


def test_bound_is_validated():
  from kdjax.config import ConfigError, validate
  config = ml_collections.ConfigDict(tiny_config().to_dict(), type_safe=False)
  config.train.max_skipped_steps = -1
  with pytest.raises(ConfigError, match="'train.max_skipped_steps' must be >= 0"):
    validate(config)


@pytest.mark.slow
def test_cli_exits_3_on_a_diverged_run(tmp_path):
  import subprocess
  import sys
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='')
  result = subprocess.run(
      [sys.executable, '-m', 'kdjax.main', '--config', 'configs/default.py', '--workdir',
       str(tmp_path), '--config.mode=train', '--config.model.name=resnet8',
       '--config.data.name=fake', '--config.data.source=fake', '--config.data.fake_examples=64',
       '--config.train.batch_size=32', '--config.train.progress=False',
       '--config.optim.lr=1e30'], cwd=repo, env=env, capture_output=True, text=True,
      timeout=300)
  assert result.returncode == 3, result.stderr
  assert 'kdjax: error: non-finite loss at step ' in result.stderr
  assert 'Traceback' not in result.stderr
