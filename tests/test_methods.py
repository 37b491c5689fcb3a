"""Distillation methods wired into the engine (methods.md §2-4): short real runs on
fake data for every method, unit tests of each method's state handling, and a
structural check of every experiment config."""
from __future__ import annotations

import copy
import glob
import importlib.util
import json
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from conftest import tiny_config
from kdjax import methods, models
from kdjax.config import _check_schema, base_config
from kdjax.losses.cid import cid_loss
from kdjax.losses.icd import icd_loss
from kdjax.models.heads import ICDHeads, SampleRegressor, interventional_logits
from kdjax.methods import Batch, InitContext, MethodVars, ModelOutput
from kdjax.train import assemble, export, modes
from kdjax.train.steps import DataSpec
from kdjax.train.mesh import batch_sharded, make_mesh
from kdjax.train.state import make_optimizer

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')


def load_config_module(name: str):
  path = os.path.join(CONFIG_DIR, name + '.py')
  spec = importlib.util.spec_from_file_location(f'kdjax_test_config_{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def method_section(config_file: str, arg: str) -> ml_collections.ConfigDict:
  return copy.deepcopy(load_config_module(config_file).get_config(arg).method)


def read_metrics(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


# ---------------------------------------------------------------- end-to-end runs

# name -> (config file, arg, extra overrides); the weights come from the config files.
RUNS = {
    'kd': ('kd', 'resnet32x4-resnet8x4', {}),
    'fitnet': ('fitnet', 'resnet32x4-resnet8x4', {}),
    'at': ('at', 'resnet32x4-resnet8x4', {}),
    'sp': ('sp', 'resnet32x4-resnet8x4', {}),
    'crd': ('crd', 'resnet56-resnet20', {'negatives': 64}),
    'crd+kd': ('crd', 'resnet56-resnet20+kd', {'negatives': 64}),
    'icd': ('icd', 'resnet32x4-resnet8x4', {}),
    'icd+kd': ('icd', 'resnet32x4-resnet8x4+kd', {}),
}


def distill_config(teacher: str, config_file: str, arg: str, epochs: int, **sub):
  # 128 examples (4 steps an epoch) and one checkpoint at the end keep each run short
  c = tiny_config(mode='distill', teacher__checkpoint=teacher, train__epochs=epochs,
                  data__fake_examples=128, checkpoint__every=100)
  c.method = method_section(config_file, arg)
  name = c.method.name
  for key, value in sub.items():
    c.method[name][key] = value
  return c


@pytest.mark.parametrize('run', list(RUNS))
def test_method_trains(run, fake_teacher, tmp_path):
  config_file, arg, sub = RUNS[run]
  c = distill_config(fake_teacher, config_file, arg, epochs=2, **sub)
  summary = modes.run(c, str(tmp_path))
  records = read_metrics(str(tmp_path))
  losses = [r['train/loss'] for r in records]
  assert len(losses) == 2 and all(math.isfinite(l) for l in losses), losses
  if c.method.name == 'crd':
    # With Z fixed from the random initial memory, the NCE term grows while the memory
    # fills with real (on 256 fake images, very similar) embeddings, so the total is
    # not monotone in the first epochs; the label term must still go down.
    assert math.isfinite(records[-1]['train/crd/nce'])
    assert records[1]['train/ce'] < records[0]['train/ce'], records
  else:
    assert losses[1] < losses[0], losses
  # the summary's number is the last evaluation's headline head
  assert summary['last_accuracy'] == records[-1]['test/accuracy/student'], (summary, records[-1])
  assert math.isfinite(records[-1]['test/loss'])


def test_cid_trains_both_phases_and_export_matches(fake_teacher, tmp_path):
  c = distill_config(fake_teacher, 'cid', 'resnet56-resnet20', epochs=3, init_epochs=1)
  workdir = str(tmp_path / 'run')
  summary = modes.run(c, workdir)
  records = read_metrics(workdir)
  assert [r['train/cid/phase'] for r in records] == [1.0, 2.0, 2.0]
  assert records[0]['train/cid/ce'] == 0.0 and records[1]['train/cid/ce'] > 0.0
  losses = [r['train/loss'] for r in records]
  assert all(math.isfinite(l) for l in losses)
  assert losses[2] < losses[1], losses   # within phase 2 (phase 1 has no CE term)
  # before the head is trained the interventional head reports the plain logits
  first = records[0]
  assert first['test/accuracy/interventional'] == first['test/accuracy/student']
  last = records[-1]
  heads = [k for k in last if k.startswith('test/accuracy/')]
  assert heads[0] == 'test/accuracy/interventional' and 'test/accuracy/student' in heads
  assert summary['last_accuracy'] == last['test/accuracy/interventional']

  ev = copy.deepcopy(c)
  ev.mode = 'evaluate'
  ev.evaluate.checkpoint = os.path.join(workdir, 'model')
  result = modes.evaluate(ev)
  for head in ('interventional', 'student'):
    assert result[f'accuracy/{head}'] == pytest.approx(last[f'test/accuracy/{head}'], abs=1e-6)
  state = export.load(os.path.join(workdir, 'model'))[1]['method']['state']
  assert float(state['head_ready']) == 1.0 and np.abs(state['eval_dictionary']).sum() > 0


# ---------------------------------------------------------------- method wiring

def method_config(name: str, weights: dict | None = None, **sub
                  ) -> ml_collections.FrozenConfigDict:
  """``config.method`` for ``name``: common ``weights`` (gamma/alpha/beta) and ``sub``
  overrides of its own section."""
  c = base_config().method
  c.name = name
  c.update(weights or {})
  for key, value in sub.items():
    c[name][key] = value
  return ml_collections.FrozenConfigDict(c)


def pooled_outputs(rng: np.random.Generator, b: int, c: int, d_s: int, d_t: int):
  f = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  return ModelOutput(f(b, c), [f(b, d_s)]), ModelOutput(f(b, c) * 3, [jnp.abs(f(b, d_t))])


def batch_of(labels, index=None) -> Batch:
  labels = jnp.asarray(labels, jnp.int32)
  index = jnp.arange(len(labels), dtype=jnp.int32) if index is None else jnp.asarray(index)
  return Batch(jnp.zeros((len(labels), 1, 1, 3)), labels, index)


def closed_form_dictionary(pairs, num_classes: int, temperature: float) -> np.ndarray:
  """sum_i w_i f_i / sum_i w_i per class over (f_s, teacher logits, labels) batches."""
  num = np.zeros((num_classes, pairs[0][0].shape[1]))
  den = np.zeros(num_classes)
  for f, z_t, y in pairs:
    z = np.asarray(z_t, np.float64) / temperature
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    w = p[np.arange(len(y)), y]
    np.add.at(num, y, w[:, None] * np.asarray(f, np.float64))
    np.add.at(den, y, w)
  return np.where(den[:, None] > 0, num / np.where(den > 0, den, 1)[:, None], 0.0)


class CidHarness:
  C, D_S, D_T, B = 5, 6, 7, 8

  def __init__(self, init_epochs=2, cu=0.25):
    self.cfg = method_config('cid', init_epochs=init_epochs, cu=cu, b=3.0, c=0.5)
    self.method = methods.get_method('cid')
    self.rng = np.random.default_rng(0)
    s, t = pooled_outputs(self.rng, self.B, self.C, self.D_S, self.D_T)
    self.vars = self.method.init(InitContext(jax.random.PRNGKey(0), s, t, self.C, 64, self.cfg))
    # jitted once each, as in the train step (eager op-by-op dispatch is slow on CPU)
    self._loss = jax.jit(lambda v, s, t, b, e: self.method.loss(
        v, s, t, b, jax.random.PRNGKey(0), e, self.cfg))
    self._end_epoch = jax.jit(lambda st, e: self.method.end_epoch(st, e, self.cfg))

  def step(self, epoch: int, labels):
    s, t = pooled_outputs(self.rng, self.B, self.C, self.D_S, self.D_T)
    out = self._loss(self.vars, s, t, batch_of(labels), jnp.int32(epoch))
    self.vars = MethodVars(self.vars.params, out.batch_stats, out.state)
    return (np.asarray(s.feats[-1]), np.asarray(t.logits), np.asarray(labels)), out

  def end_epoch(self, epoch: int):
    state = self._end_epoch(self.vars.state, jnp.int32(epoch))
    self.vars = MethodVars(self.vars.params, self.vars.batch_stats, state)
    return state


def test_cid_end_epoch_is_the_closed_form_dictionary():
  h = CidHarness(init_epochs=2, cu=0.25)
  t = h.cfg.temperature
  labels = [[0, 0, 1, 1, 2, 2, 3, 0], [1, 1, 1, 2, 3, 0, 0, 2], [3, 3, 3, 3, 0, 1, 2, 2]]
  h.step(0, labels[0])                     # epoch 0 < init_epochs - 1: not accumulated
  assert float(jnp.abs(h.vars.state['acc_weight']).sum()) == 0.0
  h.end_epoch(0)
  assert float(h.vars.state['built']) == 0.0
  epoch1 = [h.step(1, y)[0] for y in labels]   # reference epoch == init_epochs: accumulate
  state = h.end_epoch(1)
  d1 = closed_form_dictionary(epoch1, h.C, t)
  assert np.all(d1[4] == 0)                # class 4 never seen: its row stays 0
  np.testing.assert_allclose(state['dictionary'], d1, rtol=1e-5, atol=1e-6)  # unmixed
  np.testing.assert_array_equal(state['eval_dictionary'], 0.0)
  np.testing.assert_array_equal(state['acc_sum'], 0.0)
  np.testing.assert_array_equal(state['acc_weight'], 0.0)
  assert float(state['built']) == 1.0 and float(state['head_ready']) == 0.0
  used = np.asarray(state['dictionary'])

  epoch2 = [h.step(2, y)[0] for y in labels[:2]]   # phase 2: uses d1, accumulates afresh
  state = h.end_epoch(2)
  d2 = closed_form_dictionary(epoch2, h.C, t)
  np.testing.assert_allclose(state['dictionary'], 0.25 * d1 + 0.75 * d2, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(state['eval_dictionary'], used)  # what the head trained with
  assert float(state['head_ready']) == 1.0


def test_cid_phases_select_the_objective():
  h = CidHarness(init_epochs=2)
  s, t = pooled_outputs(h.rng, h.B, h.C, h.D_S, h.D_T)
  batch = batch_of([0, 0, 1, 1, 2, 2, 3, 3])
  h.vars = h.vars._replace(state={**h.vars.state,
                                  'dictionary': jnp.ones((h.C, h.D_S), jnp.float32)})

  @jax.jit
  def loss(params, epoch):
    out = h.method.loss(h.vars._replace(params=params), s, t, batch, jax.random.PRNGKey(0),
                        epoch, h.cfg)
    return out.loss

  r = SampleRegressor(h.D_T).apply({'params': h.vars.params['regressor']}, s.feats[-1])
  args = (s.logits, t.logits, s.feats[-1], t.feats[-1], batch.labels, r)
  kw = dict(temperature=h.cfg.temperature, num_classes=h.C, a=1.0, b=3.0, c=0.5)
  z_do = interventional_logits(h.vars.params['head'], s.feats[-1], s.logits,
                               h.vars.state['dictionary'], h.cfg.temperature)
  one, two = jnp.int32(1), jnp.int32(2)
  np.testing.assert_allclose(loss(h.vars.params, one),
                             cid_loss(*args, interventional_logits=None, **kw)[0], rtol=1e-6)
  np.testing.assert_allclose(loss(h.vars.params, two),
                             cid_loss(*args, interventional_logits=z_do, **kw)[0], rtol=1e-6)
  grad = jax.jit(jax.grad(loss))
  g1, g2 = grad(h.vars.params, one), grad(h.vars.params, two)
  assert all(float(jnp.abs(x).sum()) == 0 for x in jax.tree.leaves(g1['head']))  # no CE in phase 1
  assert all(float(jnp.abs(x).sum()) > 0 for x in jax.tree.leaves(g2['head']))
  assert float(jnp.abs(g1['regressor']['linear']['kernel']).sum()) > 0


def test_cid_eval_heads():
  h = CidHarness()
  s, _ = pooled_outputs(h.rng, h.B, h.C, h.D_S, h.D_T)
  p, st = h.vars.params, dict(h.vars.state)
  heads = h.method.eval_heads(p, {}, st, s, h.cfg)
  assert list(heads) == ['interventional', 'student']
  np.testing.assert_array_equal(heads['interventional'], s.logits)   # head not trained yet
  st['head_ready'] = jnp.ones(())
  st['eval_dictionary'] = jnp.full((h.C, h.D_S), 2.0)
  heads = h.method.eval_heads(p, {}, st, s, h.cfg)
  np.testing.assert_allclose(heads['interventional'], interventional_logits(
      p['head'], s.feats[-1], s.logits, st['eval_dictionary'], h.cfg.temperature), rtol=1e-6)
  no_int = method_config('cid', use_intervention=False)
  assert list(h.method.eval_heads(p, {}, st, s, no_int)) == ['student']


def test_cid_regressor_gets_no_weight_decay():
  h = CidHarness()
  params = h.vars.params
  mask = h.method.decay_mask(params)
  assert not any(jax.tree.leaves(mask['regressor'])) and all(jax.tree.leaves(mask['head']))
  optim = base_config().optim
  tx = make_optimizer(optim, optax.constant_schedule(0.1), mask)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  assert all(float(jnp.abs(u).sum()) == 0 for u in jax.tree.leaves(updates['regressor']))
  assert all(float(jnp.abs(u).sum()) > 0 for u in jax.tree.leaves(updates['head']))


def test_cid_head_is_held_through_phase_1():
  """The reference's interventional head has no gradient before init_epochs and torch's
  SGD skips it (no decay, no momentum): it enters phase 2 at its initial values, and
  its first phase-2 step is a fresh momentum step. The training's own optimizer."""
  config = tiny_config(mode='distill', method__name='cid', teacher__model='resnet8',
                       optim__nesterov=True)
  config.method.cid.init_epochs = 2
  steps_per_epoch = 3
  teacher = models.create_model('resnet8', 4)
  t_vars = teacher.init(jax.random.PRNGKey(1), jnp.zeros((1, 32, 32, 3)), train=False)
  setup = assemble.assemble(config, assemble.configured(config), num_classes=4, num_train=96,
                            image_shape=(32, 32, 3), data=DataSpec((0.5,) * 3, (0.25,) * 3, 0, False),
                            steps_per_epoch=steps_per_epoch,
                            teacher=assemble.Teacher(teacher, t_vars, {}))
  params, tx = setup.state.params, setup.tx
  opt_state = tx.init(params)
  rng = np.random.default_rng(0)
  head0 = params['method']['head']
  new = params
  for step in range(2 * steps_per_epoch + 1):
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), new)
    grads['method']['head'] = jax.tree.map(jnp.zeros_like, new['method']['head'])  # phase 1
    before = new
    updates, opt_state = tx.update(grads, opt_state, new)
    new = optax.apply_updates(new, updates)
    if step < 2 * steps_per_epoch:
      assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(new['method']['head']),
                                                      jax.tree.leaves(head0))), step
      moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()),
                           new['method']['regressor'], before['method']['regressor'])
      assert min(jax.tree.leaves(moved)) > 0  # the rest trains
  # first phase-2 step: momentum buffer starts from this step's gradient (here wd * p), so
  # with Nesterov the update is -lr * (1 + momentum) * wd * p
  lr = float(setup.schedule(2 * steps_per_epoch))
  wd, mom = config.optim.weight_decay, config.optim.momentum
  for a, b in zip(jax.tree.leaves(new['method']['head']), jax.tree.leaves(head0)):
    np.testing.assert_allclose(a - b, -lr * (1 + mom) * wd * b, rtol=1e-4, atol=1e-9)


def test_crd_memory_changes_only_at_batch_indices():
  cfg = method_config('crd', negatives=16, feat_dim=8)
  crd = methods.get_method('crd')
  rng = np.random.default_rng(1)
  s, t = pooled_outputs(rng, 8, 4, 6, 10)
  train_labels = np.arange(40) % 4
  mvars = crd.init(InitContext(jax.random.PRNGKey(0), s, t, 4, 40, cfg, train_labels))
  assert mvars.state['memory_s'].shape == (40, 8) and float(mvars.state['z_s']) < 0
  np.testing.assert_array_equal(mvars.state['labels'], train_labels)  # other-class sampler
  idx = np.array([3, 7, 11, 12, 20, 25, 31, 39], np.int32)
  batch = batch_of([0, 1, 2, 3, 0, 1, 2, 3], idx)
  loss = jax.jit(lambda v, key: crd.loss(v, s, t, batch, key, jnp.int32(0), cfg))
  out = loss(mvars, jax.random.PRNGKey(5))
  assert np.isfinite(float(out.loss))
  other = np.setdiff1d(np.arange(40), idx)
  for side in ('memory_s', 'memory_t'):
    old, new = np.asarray(mvars.state[side]), np.asarray(out.state[side])
    np.testing.assert_array_equal(new[other], old[other])
    assert np.all(np.abs(new[idx] - old[idx]).max(1) > 0)
    np.testing.assert_allclose(np.linalg.norm(new[idx], axis=1), 1.0, rtol=1e-5)
  assert float(out.state['z_s']) > 0 and float(out.state['z_t']) > 0
  # the negatives come from the step's key
  again, other_key = loss(mvars, jax.random.PRNGKey(5)), loss(mvars, jax.random.PRNGKey(6))
  nce = lambda o: float(o.metrics['crd/nce'])
  assert nce(again) == nce(out) and nce(other_key) != nce(out)
  with pytest.raises(ValueError, match='training labels'):
    crd.init(InitContext(jax.random.PRNGKey(0), s, t, 4, 40, cfg))
  with pytest.raises(ValueError, match='sampling'):
    crd.init(InitContext(jax.random.PRNGKey(0), s, t, 4, 40,
                         method_config('crd', sampling='exact')))


def test_crd_default_sampling_is_other_class_without_replacement():
  """RepDistiller's default --mode exact (methods.md §2): with the labels the method
  samples other-class negatives without replacement; with more negatives than some
  class's other-class examples, with replacement; 'uniform' keeps the old sampler."""
  assert methods.get_method('crd').default_config().sampling == 'other_class'
  from configs import crd as crd_config
  assert crd_config.get_config('resnet56-resnet20').method.crd.sampling == 'other_class'
  crd = methods.get_method('crd')
  s, t = pooled_outputs(np.random.default_rng(1), 8, 4, 6, 10)
  labels = np.arange(40) % 4
  state = lambda k, sampling='other_class': crd.init(InitContext(
      jax.random.PRNGKey(0), s, t, 4, 40, method_config('crd', negatives=k, feat_dim=8,
                                                        sampling=sampling), labels)).state
  exact, with_replacement, uniform = state(30), state(31), state(30, 'uniform')
  assert exact['window'].shape == (40,) and 'order' not in exact
  assert 'order' in with_replacement and 'window' not in with_replacement
  assert not {'labels', 'window', 'order'} & set(uniform)


def test_fitnet_regressor_trains_and_updates_its_batch_stats():
  cfg = method_config('fitnet', dict(gamma=1.0, alpha=0.0, beta=100.0), hint_layer=2)
  fitnet = methods.get_method('fitnet')
  rng = np.random.default_rng(2)
  f = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  s = ModelOutput(f(8, 4), [f(8, 8, 8, 3), f(8, 8, 8, 3), f(8, 8, 8, 4), f(8, 8)])
  t = ModelOutput(f(8, 4), [f(8, 4, 4, 5), f(8, 4, 4, 5), f(8, 4, 4, 6), f(8, 8)])
  mvars = fitnet.init(InitContext(jax.random.PRNGKey(0), s, t, 4, 16, cfg))
  batch = batch_of([0, 1, 2, 3] * 2)

  def loss(params):
    out = fitnet.loss(mvars._replace(params=params), s, t, batch, jax.random.PRNGKey(0),
                      jnp.int32(0), cfg)
    return out.loss, out
  (_, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(mvars.params)
  assert out.metrics['fitnet/hint'] > 0
  assert float(jnp.abs(grads['regressor']['conv']['kernel']).sum()) > 0
  old, new = mvars.batch_stats['regressor']['bn'], out.batch_stats['regressor']['bn']
  assert float(jnp.abs(new['mean'] - old['mean']).sum()) > 0


def test_at_uses_the_intermediate_pairs_only():
  cfg = method_config('at', dict(gamma=1.0, alpha=0.0, beta=1000.0))
  at = methods.get_method('at')
  rng = np.random.default_rng(3)
  f = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  mid = [f(8, 8, 8, 3), f(8, 4, 4, 5)]
  s = ModelOutput(f(8, 4), [f(8, 8, 8, 2)] + mid + [f(8, 6)])
  t = ModelOutput(f(8, 4), [f(8, 8, 8, 2) * 5] + mid + [f(8, 6)])  # stem/pooled differ
  out = at.loss(MethodVars({}, {}, {}), s, t, batch_of([0, 1, 2, 3] * 2), None, jnp.int32(0), cfg)
  assert float(out.metrics['method']) == 0.0
  t2 = ModelOutput(t.logits, [t.feats[0], mid[0] * -1.5 + 1, mid[1], t.feats[-1]])
  out2 = at.loss(MethodVars({}, {}, {}), s, t2, batch_of([0, 1, 2, 3] * 2), None, jnp.int32(0), cfg)
  assert float(out2.metrics['at/pair0']) > 0 and float(out2.metrics['at/pair1']) == 0.0


def test_sp_matches_the_last_feature_maps_only():
  """SP's term is the fixture-checked ``similarity_loss`` on feats[-2]; the other maps
  and the pooled vector do not enter it."""
  from kdjax.losses import similarity_loss
  cfg = method_config('sp', dict(gamma=1.0, alpha=0.0, beta=3000.0))
  sp = methods.get_method('sp')
  rng = np.random.default_rng(5)
  f = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  s = ModelOutput(f(8, 4), [f(8, 8, 8, 2), f(8, 4, 4, 5), f(8, 6)])
  t = ModelOutput(f(8, 4), [f(8, 8, 8, 3), f(8, 4, 4, 7), f(8, 9)])
  out = sp.loss(MethodVars({}, {}, {}), s, t, batch_of([0, 1, 2, 3] * 2), None, jnp.int32(0), cfg)
  expected = similarity_loss(s.feats[-2], t.feats[-2])
  np.testing.assert_allclose(out.metrics['sp'], expected, rtol=1e-6)
  np.testing.assert_allclose(out.loss, out.metrics['ce'] + 3000.0 * expected, rtol=1e-6)
  t_other = ModelOutput(t.logits, [t.feats[0] * 3, t.feats[1], t.feats[2] * -2])
  out2 = sp.loss(MethodVars({}, {}, {}), s, t_other, batch_of([0, 1, 2, 3] * 2), None,
                 jnp.int32(0), cfg)
  assert float(out2.metrics['sp']) == float(out.metrics['sp'])


def test_icd_negatives_are_the_global_batch():
  """Sharding the batch over the 8 devices leaves the B x B logits global."""
  cfg = method_config('icd', dict(gamma=1.0, alpha=0.0, beta=1.0))
  icd = methods.get_method('icd')
  rng = np.random.default_rng(4)
  s, t = pooled_outputs(rng, 16, 4, 6, 10)
  mvars = icd.init(InitContext(jax.random.PRNGKey(0), s, t, 4, 16, cfg))
  batch = batch_of([0, 1, 2, 3] * 4)
  @jax.jit
  def expected_fn(params, f_s, f_t):
    return icd_loss(*ICDHeads(128).apply({'params': params}, f_s, f_t))[0]
  expected = expected_fn(mvars.params, s.feats[-1], t.feats[-1])
  sharding = batch_sharded(make_mesh())
  shard = lambda x: jax.device_put(x, sharding)
  s_sh = ModelOutput(shard(s.logits), [shard(s.feats[-1])])
  t_sh = ModelOutput(shard(t.logits), [shard(t.feats[-1])])
  step = jax.jit(lambda v, a, b: icd.loss(v, a, b, batch, None, jnp.int32(0), cfg))
  out = step(mvars, s_sh, t_sh)
  np.testing.assert_allclose(out.metrics['method'], expected, rtol=1e-5)


# ---------------------------------------------------------------- configs

CONFIG_FILES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(CONFIG_DIR, '*.py'))
                      if not os.path.basename(p).startswith('_'))


@pytest.mark.parametrize('name', CONFIG_FILES)
def test_config_file_validates(name):
  module = load_config_module(name)
  args = getattr(module, 'ARGS', ('',))
  assert args
  assert set(getattr(module, 'PUBLISHED', {})) <= set(args)
  schema = base_config()
  model_names = set(models.model_names())
  for arg in args:
    c = module.get_config(arg)
    _check_schema(c, schema)
    assert c.model.name in model_names, (arg, c.model.name)
    assert c.method.name in methods.method_names(), (arg, c.method.name)
    if c.mode == 'distill':
      assert c.teacher.model in model_names, (arg, c.teacher.model)
      assert c.teacher.checkpoint == '', 'a placeholder the user overrides'
  with pytest.raises(ValueError, match='accepted'):
    module.get_config('no-such-arg')
