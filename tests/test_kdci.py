"""KDCI (methods.md §6): the de-confounded head, the dictionary, the transformer's loss,
its ablation switches, config checks, and short real runs over KD and CID (training,
both heads in the metrics and the export, evaluate, bitwise resume)."""
from __future__ import annotations

import copy
import json
import os

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import stop_after, tiny_config
from kdjax import methods
from kdjax.cluster import kmeans, pca_fit, pca_transform
from kdjax.config import ConfigError, base_config, validate
from kdjax.losses.kdci import entropy
from kdjax.models.heads import DeconfoundedHead
from kdjax.methods import Batch, InitContext, MethodVars, ModelOutput
from kdjax.methods.kdci import dictionary_features, kdci, rebuild_dictionary, resolve
from kdjax import errors
from kdjax.train import export, guards, modes

C, D_S, D_T, B, N_TRAIN = 4, 6, 9, 8, 40


def method_config(base: str = 'kd', **kdci_overrides) -> ml_collections.FrozenConfigDict:
  c = base_config().method
  c.name = base
  c.kdci.enabled = True
  c.kdci.pca_dim = 3
  c.kdci.hidden = 16
  c.kdci.kmeans_iters = 20
  c.kdci.update(kdci_overrides)
  return ml_collections.FrozenConfigDict(c)


def outputs(seed: int, b: int = B) -> tuple[ModelOutput, ModelOutput]:
  rng = np.random.default_rng(seed)
  f = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  return ModelOutput(f(b, C), [f(b, D_S)]), ModelOutput(3 * f(b, C), [jnp.abs(f(b, D_T))])


def batch_of(index) -> Batch:
  index = jnp.asarray(index, jnp.int32)
  return Batch(jnp.zeros((len(index), 1, 1, 3)), index % C, index)


def init(cfg, base: str = 'kd', num_train: int = N_TRAIN) -> tuple[methods.Method, MethodVars]:
  method = kdci(methods.get_method(base))
  s, t = outputs(0)
  return method, method.init(InitContext(jax.random.PRNGKey(0), s, t, C, num_train, cfg))


def blob_features(sizes, d: int = D_T, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(len(sizes), d)) * 10
  labels = np.repeat(np.arange(len(sizes)), sizes)
  return (centres[labels] + 0.05 * rng.normal(size=(len(labels), d))).astype(np.float32), labels


# ---------------------------------------------------------------- the head

@pytest.mark.parametrize('attention', ['additive', 'dot'])
def test_head_shapes_weights_and_gradients(attention):
  rng = np.random.default_rng(1)
  n, d_z = 5, 3
  h = jnp.asarray(rng.normal(size=(B, D_S)), jnp.float32)
  protos = jnp.asarray(rng.normal(size=(n, d_z)), jnp.float32)
  prior = jnp.asarray(rng.dirichlet(np.ones(n)), jnp.float32)
  head = DeconfoundedHead(C, 16, attention)
  params = head.init(jax.random.PRNGKey(0), h, protos, prior)['params']
  assert set(params) == {'query', 'key', 'fuse_h', 'fuse_f', 'classifier'} | (
      {'score'} if attention == 'additive' else set())
  z_do, lam = head.apply({'params': params}, h, protos, prior)
  chex.assert_shape([z_do, lam], [(B, C), (B, n)])
  chex.assert_tree_all_finite((z_do, lam))
  np.testing.assert_allclose(lam.sum(-1), np.ones(B), rtol=1e-6)
  assert np.all(np.asarray(lam) > 0)

  def loss(params, h):
    z, _ = head.apply({'params': params}, h, protos, prior)
    return jnp.sum(jnp.sin(z))

  g_params, g_h = jax.grad(loss, argnums=(0, 1))(params, h)
  chex.assert_trees_all_equal_shapes(g_params, params)
  chex.assert_shape(g_h, h.shape)
  for path, g in jax.tree_util.tree_flatten_with_path(g_params)[0]:
    assert float(jnp.abs(g).sum()) > 0, jax.tree_util.keystr(path)


def test_head_compensation_is_the_prior_weighted_attention_sum():
  rng = np.random.default_rng(2)
  h = jnp.asarray(rng.normal(size=(B, D_S)), jnp.float32)
  protos = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
  prior = jnp.asarray(rng.dirichlet(np.ones(5)), jnp.float32)
  head = DeconfoundedHead(C, 16)
  params = head.init(jax.random.PRNGKey(0), h, protos, prior)['params']
  z_do, lam = head.apply({'params': params}, h, protos, prior)
  # independent evaluation of u = h W_h + F W_g with F = sum_i lam_i P(z_i) z_i
  lam_np, p, z = np.asarray(lam, np.float64), np.asarray(prior, np.float64), np.asarray(protos)
  f = np.einsum('bn,n,nd->bd', lam_np, p, z)
  u = np.asarray(h) @ np.asarray(params['fuse_h']['kernel']) + f @ np.asarray(
      params['fuse_f']['kernel'])
  expected = u @ np.asarray(params['classifier']['kernel']) + np.asarray(
      params['classifier']['bias'])
  np.testing.assert_allclose(z_do, expected, rtol=1e-4, atol=1e-5)


def test_entropy_handles_zeros():
  np.testing.assert_allclose(entropy(jnp.array([0.5, 0.5, 0.0])), np.log(2), rtol=1e-6)
  assert float(entropy(jnp.array([1.0, 0.0]))) == 0.0


# ---------------------------------------------------------------- the dictionary

def test_rebuild_dictionary_is_pca_then_kmeans_with_proportions():
  sizes = [20, 5, 10, 5]
  feats, labels = blob_features(sizes)
  pad = np.zeros((8, D_T), np.float32) + 1e3        # unfilled pool slots
  x = jnp.asarray(np.concatenate([feats, pad]))
  mask = jnp.asarray(np.arange(len(x)) < len(feats))
  cfg = method_config()
  _, vars = init(cfg)
  key = jax.random.PRNGKey(3)
  state = jax.jit(rebuild_dictionary, static_argnums=4)(vars.state, x, mask, key, cfg.kdci)
  k = state['kdci']
  assert float(k['built']) == 1.0
  chex.assert_shape([k['prototypes'], k['prior']], [(C, 3), (C,)])
  np.testing.assert_allclose(np.sort(np.asarray(k['prior'])), np.sort(np.array(sizes) / 40),
                             rtol=1e-6)
  # prototypes: cluster means of the PCA coordinates of the valid rows
  proj = np.asarray(pca_transform(pca_fit(x, mask, 3), x))[:len(feats)]
  for c in range(len(sizes)):
    mean = proj[labels == c].mean(0)
    assert np.min(np.linalg.norm(np.asarray(k['prototypes']) - mean, axis=1)) < 1e-3
  again = rebuild_dictionary(vars.state, x, mask, key, cfg.kdci)
  chex.assert_trees_all_equal(state, again)
  chex.assert_trees_all_equal(state['base'], vars.state['base'])   # base state untouched


def test_rebuild_without_pca_clusters_the_raw_features():
  feats, labels = blob_features([10, 10, 10, 10])
  cfg = method_config(pca_dim=0)
  _, vars = init(cfg)
  assert vars.state['kdci']['prototypes'].shape == (C, D_T)
  state = rebuild_dictionary(vars.state, jnp.asarray(feats), jnp.ones(40), jax.random.PRNGKey(0),
                             cfg.kdci)
  centroids, _, _ = kmeans(jax.random.split(jax.random.PRNGKey(0))[0], jnp.asarray(feats),
                           jnp.ones(40), C, 20)
  chex.assert_trees_all_equal(state['kdci']['prototypes'], centroids)


def test_an_empty_pool_keeps_the_dictionary():
  cfg = method_config()
  _, vars = init(cfg)
  state = rebuild_dictionary(vars.state, jnp.ones((6, D_T)), jnp.zeros(6), jax.random.PRNGKey(0),
                             cfg.kdci)
  chex.assert_trees_all_equal(state, vars.state)


def test_dictionary_features_penultimate_or_softened_logits():
  _, t = outputs(4)
  cfg = method_config()
  np.testing.assert_array_equal(dictionary_features(t, cfg), t.feats[-1])
  soft = dictionary_features(t, method_config(feature='logits'))
  z = np.asarray(t.logits, np.float64) / cfg.temperature
  np.testing.assert_allclose(soft, np.exp(z) / np.exp(z).sum(1, keepdims=True), rtol=1e-5)
  _, vars = init(method_config(feature='logits', pca_dim=64))
  assert vars.state['kdci']['prototypes'].shape == (C, C)   # PCA width capped at d_f
  assert vars.state['kdci']['memory'].shape == (N_TRAIN, C)


# ---------------------------------------------------------------- ablation switches

def _built(cfg, key=jax.random.PRNGKey(5)):
  feats, _ = blob_features([12, 8, 12, 8])
  _, vars = init(cfg)
  return rebuild_dictionary(vars.state, jnp.asarray(feats), jnp.ones(40), key, cfg.kdci)['kdci']


def test_random_prototypes_changes_only_the_prototypes():
  ref, rnd = _built(method_config()), _built(method_config(random_prototypes=True))
  chex.assert_trees_all_equal(rnd['prior'], ref['prior'])
  chex.assert_trees_all_equal(rnd['memory'], ref['memory'])
  assert np.abs(np.asarray(rnd['prototypes']) - np.asarray(ref['prototypes'])).min() > 1e-3
  chex.assert_shape(rnd['prototypes'], ref['prototypes'].shape)


def test_uniform_prior_changes_only_the_prior():
  ref, uni = _built(method_config()), _built(method_config(uniform_prior=True))
  chex.assert_trees_all_equal(uni['prototypes'], ref['prototypes'])
  np.testing.assert_array_equal(uni['prior'], np.full(C, 1 / C, np.float32))
  assert not np.allclose(ref['prior'], 1 / C)


def test_num_prototypes_sets_the_dictionary_size():
  k = _built(method_config(num_prototypes=7))
  chex.assert_shape([k['prototypes'], k['prior']], [(7, 3), (7,)])
  np.testing.assert_allclose(float(k['prior'].sum()), 1.0, rtol=1e-6)


def _loss_out(cfg, state=None, base='kd'):
  method, vars = init(cfg, base)
  if state is not None:
    vars = MethodVars(vars.params, vars.batch_stats, state)
  s, t = outputs(6)
  return jax.jit(lambda v: method.loss(v, s, t, batch_of(np.arange(B)), jax.random.PRNGKey(1),
                                       jnp.int32(0), cfg))(vars)


def test_random_attention_changes_only_the_attention():
  cfg, rcfg = method_config(), method_config(random_attention=True)
  built = {'base': {}, 'kdci': _built(cfg)}
  ref, rnd = _loss_out(cfg, built), _loss_out(rcfg, built)
  chex.assert_trees_all_equal(rnd.state, ref.state)         # same dictionary and memory
  chex.assert_trees_all_equal(rnd.batch_stats, ref.batch_stats)
  assert rnd.metrics['kdci/attention_entropy'] != ref.metrics['kdci/attention_entropy']
  assert rnd.metrics['kdci/prior_entropy'] == ref.metrics['kdci/prior_entropy']
  # the plain-logit half of the loss is the same, the adjusted half is not
  assert rnd.metrics['plain/kd'] == ref.metrics['plain/kd']
  assert rnd.metrics['kd'] != ref.metrics['kd']
  # the random weights do not depend on the head's attention parameters
  method, vars = init(rcfg)
  s, _ = outputs(6)
  heads = lambda p: method.eval_heads(p, vars.batch_stats, built, s, rcfg)['kdci']
  zero_attn = {**vars.params, 'kdci': {**vars.params['kdci'],
                                       'query': jax.tree.map(jnp.zeros_like,
                                                             vars.params['kdci']['query'])}}
  chex.assert_trees_all_equal(heads(vars.params), heads(zero_attn))


# ---------------------------------------------------------------- the wrapped loss

def test_loss_is_the_base_loss_on_z_do_plus_plain_weight_times_the_plain_loss():
  base = methods.get_method('kd')
  s, t = outputs(7)
  b = batch_of(np.arange(B))
  key = jax.random.PRNGKey(2)
  outs = {}
  for w in (0.0, 0.5):
    cfg = method_config(plain_weight=w)
    method, vars = init(cfg)
    outs[w] = method.loss(vars, s, t, b, key, jnp.int32(0), cfg)
  plain = base.loss(MethodVars({}, {}, {}), s, t, b, key, jnp.int32(0), cfg)
  np.testing.assert_allclose(outs[0.5].loss, outs[0.0].loss + 0.5 * plain.loss, rtol=1e-6)
  assert 'plain/kd' in outs[0.5].metrics and 'plain/kd' not in outs[0.0].metrics
  # the adjusted half is KD's loss on z_do
  method, vars = init(cfg)
  heads = method.eval_heads(vars.params, vars.batch_stats, vars.state, s, cfg)
  assert list(heads) == ['kdci', 'student']
  on_zdo = base.loss(MethodVars({}, {}, {}), s._replace(logits=heads['kdci']), t, b, key,
                     jnp.int32(0), cfg)
  np.testing.assert_allclose(outs[0.0].loss, on_zdo.loss, rtol=1e-6)


def test_before_the_first_build_the_compensation_is_zero():
  cfg = method_config()
  method, vars = init(cfg)
  s, _ = outputs(8)
  garbage = {'base': {}, 'kdci': {**vars.state['kdci'],
                                  'prototypes': jnp.full((C, 3), 5.0),
                                  'prior': jnp.full((C,), 0.25)}}
  a = method.eval_heads(vars.params, vars.batch_stats, vars.state, s, cfg)['kdci']
  b = method.eval_heads(vars.params, vars.batch_stats, garbage, s, cfg)['kdci']
  chex.assert_trees_all_equal(a, b)                          # built = 0: F = 0
  built = {'base': {}, 'kdci': {**garbage['kdci'], 'built': jnp.ones(())}}
  c = method.eval_heads(vars.params, vars.batch_stats, built, s, cfg)['kdci']
  assert not np.allclose(a, c)


def test_memory_is_written_by_index_and_end_epoch_rebuilds_every_dict_every():
  cfg = method_config(dict_every=2)
  method, vars = init(cfg)
  loss = jax.jit(lambda v, s, t, b: method.loss(v, s, t, b, jax.random.PRNGKey(0), jnp.int32(0),
                                                cfg))
  end = jax.jit(lambda st, e: method.end_epoch(st, e, cfg))
  written = {}
  for step, idx in enumerate([np.arange(8), np.arange(20, 28)]):
    s, t = outputs(10 + step)
    out = loss(vars, s, t, batch_of(idx))
    vars = MethodVars(vars.params, out.batch_stats, out.state)
    written.update(dict(zip(idx.tolist(), np.asarray(t.feats[-1]))))
  k = vars.state['kdci']
  rows = sorted(written)
  np.testing.assert_array_equal(np.flatnonzero(k['filled']), rows)
  np.testing.assert_array_equal(k['memory'][np.array(rows)], np.stack([written[r] for r in rows]))
  assert float(np.abs(np.delete(np.asarray(k['memory']), rows, 0)).sum()) == 0
  after0 = end(vars.state, jnp.int32(0))                     # (0 + 1) % 2 != 0: no build
  chex.assert_trees_all_equal(after0, vars.state)
  after1 = end(vars.state, jnp.int32(1))
  expected = rebuild_dictionary(vars.state, k['memory'], k['filled'],
                                jax.random.fold_in(k['key'], 1), cfg.kdci)
  chex.assert_trees_all_equal(after1, expected)
  assert float(after1['kdci']['built']) == 1.0


def test_no_memory_for_a_data_free_pool():
  _, vars = init(method_config(), num_train=0)
  assert set(vars.state['kdci']) == {'prototypes', 'prior', 'built', 'key'}


def test_the_loss_compiles_once_across_rebuilds():
  cfg = method_config()
  method, vars = init(cfg)
  b = batch_of(np.arange(B))

  @jax.jit
  @chex.assert_max_traces(n=1)
  def loss(v, s, t):
    return method.loss(v, s, t, b, jax.random.PRNGKey(0), jnp.int32(0), cfg)

  feats, _ = blob_features([10, 10, 10, 10])
  for step in range(3):
    s, t = outputs(20 + step)
    out = loss(vars, s, t)
    state = out.state
    if step == 1:
      state = rebuild_dictionary(state, jnp.asarray(feats), jnp.ones(40),
                                 jax.random.PRNGKey(step), cfg.kdci)
    vars = MethodVars(vars.params, out.batch_stats, state)
  assert float(out.metrics['kdci/built']) == 1.0


def test_wrapping_is_cached_and_names_the_pair():
  kd = methods.get_method('kd')
  assert kdci(kd) is kdci(kd) and kdci(kd).name == 'kd+kdci' and kdci(kd).needs_teacher
  on, off = method_config(), base_config().method
  assert resolve('kd', on) is kdci(kd) and resolve('kd', off) is kd
  assert resolve('kd+kdci', off) is kdci(kd)                 # an export's name
  with pytest.raises(ValueError, match='already wrapped'):
    kdci(kdci(kd))


def test_the_base_part_of_the_state_is_the_base_methods():
  cfg = method_config(base='crd')
  c = ml_collections.ConfigDict(cfg.to_dict())
  c.crd.negatives = 16
  c.crd.sampling = 'uniform'   # other-class sampling needs the training labels in the context
  cfg = ml_collections.FrozenConfigDict(c)
  method, vars = init(cfg, 'crd')
  s, t = outputs(0)
  plain = methods.get_method('crd').init(InitContext(jax.random.PRNGKey(0), s, t, C, N_TRAIN, cfg))
  chex.assert_trees_all_equal(vars.params['base'], plain.params)
  chex.assert_trees_all_equal(vars.state['base'], plain.state)
  mask = method.decay_mask(vars.params)
  assert jax.tree.structure(mask) == jax.tree.structure(vars.params)


# ---------------------------------------------------------------- config checks

@pytest.mark.parametrize('key,value,message', [
    ('num_prototypes', -1, "'method.kdci.num_prototypes' must be >= 0"),
    ('pca_dim', -2, "'method.kdci.pca_dim' must be >= 0"),
    ('hidden', 0, "'method.kdci.hidden' must be > 0"),
    ('plain_weight', -0.5, "'method.kdci.plain_weight' must be >= 0"),
    ('dict_every', -1, "'method.kdci.dict_every' must be >= 0"),
    ('attention', 'bilinear', "'method.kdci.attention' is 'bilinear'; accepted: additive, dot"),
    ('feature', 'pixels', "'method.kdci.feature' is 'pixels'; accepted: penultimate, logits"),
])
def test_bad_kdci_config_is_one_line(key, value, message):
  c = tiny_config(mode='train')
  c.method.kdci[key] = value
  with pytest.raises(ConfigError) as e:
    validate(c)
  assert message in str(e.value) and '\n' not in str(e.value)


def test_kdci_needs_a_method_with_a_teacher(fake_teacher):
  c = tiny_config(mode='distill', teacher__checkpoint=fake_teacher, method__name='ce')
  c.method.kdci.enabled = True
  with pytest.raises(ConfigError, match="method 'ce' has no teacher"):
    validate(c)


# ---------------------------------------------------------------- real runs

def _read(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def kdci_run_config(teacher: str, epochs: int = 5, **overrides):
  c = tiny_config(mode='distill', teacher__checkpoint=teacher, train__epochs=epochs,
                  **overrides)
  c.method.kdci.enabled = True
  c.method.kdci.hidden = 32
  return c


def test_kd_with_kdci_learns_reports_both_heads_and_evaluates(fake_teacher, tmp_path):
  c = kdci_run_config(fake_teacher)
  validate(c)
  workdir = str(tmp_path / 'run')
  summary = modes.run(c, workdir)
  records = _read(workdir)
  last = records[-1]
  heads = [k for k in last if k.startswith('test/accuracy/')]
  assert heads == ['test/accuracy/kdci', 'test/accuracy/student']
  assert summary['last_accuracy'] == last['test/accuracy/kdci']
  # 4 balanced classes: chance is 25%
  assert last['test/accuracy/kdci'] > 0.5 and last['test/accuracy/student'] > 0.5, last
  assert records[0]['train/kdci/built'] == 0.0 and last['train/kdci/built'] == 1.0
  for key in ('prior_entropy', 'prior_max', 'attention_entropy'):
    assert np.isfinite(last[f'train/kdci/{key}'])
  assert 0 < last['train/kdci/prior_max'] <= 1 and last['train/kdci/prior_entropy'] > 0
  meta, variables = export.load(os.path.join(workdir, 'model'))
  assert meta['method'] == 'kd+kdci' and meta['method_config']['kdci']['enabled']
  k = variables['method']['state']['kdci']
  assert float(k['built']) == 1.0 and np.isclose(k['prior'].sum(), 1.0)
  assert k['prototypes'].shape == (4, 64)          # resnet8's 64-wide feature, pca_dim 64
  assert set(variables['method']['params']) == {'base', 'kdci'}

  ev = copy.deepcopy(c)
  ev.mode = 'evaluate'
  ev.method.kdci.enabled = False                   # the export's metadata decides
  ev.evaluate.checkpoint = workdir
  validate(ev)
  result = modes.evaluate(ev)
  assert [k for k in result if k.startswith('accuracy/')] == ['accuracy/kdci', 'accuracy/student']
  for head in ('kdci', 'student'):
    assert result[f'accuracy/{head}'] == pytest.approx(last[f'test/accuracy/{head}'], abs=1e-6)


def test_cid_with_kdci_composes(fake_teacher, tmp_path):
  c = kdci_run_config(fake_teacher, epochs=2, data__fake_examples=128, method__name='cid')
  c.method.cid.init_epochs = 1
  c.method.kdci.num_prototypes = 6
  c.method.kdci.feature = 'logits'
  validate(c)
  modes.run(c, str(tmp_path))
  last = _read(str(tmp_path))[-1]
  heads = [k for k in last if k.startswith('test/accuracy/')]
  assert heads == ['test/accuracy/kdci', 'test/accuracy/interventional', 'test/accuracy/student']
  assert last['train/cid/phase'] == 2.0 and np.isfinite(last['train/loss'])
  state = export.load(str(tmp_path))[1]['method']['state']
  assert float(state['base']['head_ready']) == 1.0       # CID's own end_epoch ran
  assert state['kdci']['prototypes'].shape == (6, 4)     # softened logits: d_f = 4 classes


@pytest.mark.slow
def test_resume_with_a_dictionary_is_bitwise(fake_teacher, tmp_path, monkeypatch):
  c = kdci_run_config(fake_teacher, epochs=3, checkpoint__every=1)
  straight = str(tmp_path / 'straight')
  modes.run(c, straight)
  interrupted = str(tmp_path / 'interrupted')
  with monkeypatch.context() as m:
    # 8 steps an epoch: stopped at step 12, after the epoch-1 dictionary build
    m.setattr(guards, 'StopFlag', stop_after(11))
    with pytest.raises(errors.Preempted, match='saved step 12'):
      modes.run(c, interrupted)
  modes.run(c, interrupted)
  _, a = export.load(straight)
  _, b = export.load(interrupted)
  assert float(a['method']['state']['kdci']['built']) == 1.0
  chex.assert_trees_all_equal(a, b)


@pytest.mark.slow
def test_every_method_with_a_teacher_composes():
  """Init and one loss of KDCI over each teacher method on a real resnet8 forward."""
  from kdjax.models import create_model
  model = create_model('resnet8', C)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(B, 32, 32, 3)), jnp.float32)
  variables = model.init(jax.random.PRNGKey(0), x, train=False)
  logits, feats = model.apply(variables, x, train=False)
  out = ModelOutput(logits, list(feats))
  teacher = ModelOutput(logits * 2, [f * 1.5 for f in feats])
  names = [n for n in methods.method_names() if methods.get_method(n).needs_teacher]
  assert {'kd', 'crd', 'cid', 'icd', 'fitnet', 'at'} <= set(names)
  for name in names:
    c = base_config().method
    c.name = name
    c.kdci.enabled, c.kdci.hidden = True, 8
    if 'crd' in c:
      c.crd.negatives = 16
      c.crd.sampling = 'uniform'   # other-class sampling needs the training labels
    cfg = ml_collections.FrozenConfigDict(c)
    method = resolve(name, cfg)
    vars = method.init(InitContext(jax.random.PRNGKey(0), out, teacher, C, N_TRAIN, cfg))

    def loss(params):
      return method.loss(MethodVars(params, vars.batch_stats, vars.state), out, teacher,
                         batch_of(np.arange(B)), jax.random.PRNGKey(1), jnp.int32(0), cfg).loss

    value, grads = jax.jit(jax.value_and_grad(loss))(vars.params)
    assert np.isfinite(float(value)), name
    assert float(jnp.abs(grads['kdci']['classifier']['kernel']).sum()) > 0, name
    heads = method.eval_heads(vars.params, vars.batch_stats, vars.state, out, cfg)
    assert list(heads)[0] == 'kdci' and all(h.shape == (B, C) for h in heads.values()), name
