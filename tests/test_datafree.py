"""mode=datafree: the pool, the round schedule, the synthesizers end to end, sharding,
the training split never read, and a SIGKILL mid-synthesis resumed bitwise."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from kdjax import datafree
from kdjax.datafree import pool as pool_lib
from kdjax.train import export

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_pool_ring_buffer_counts_wraps_and_labels():
  p = datafree.init_pool(5, (2, 2, 3), num_classes=3)
  imgs = jnp.arange(3)[:, None, None, None] * jnp.ones((3, 2, 2, 3), jnp.uint8)
  logits = jax.nn.one_hot(jnp.array([2, 0, 1]), 3)
  p = datafree.add(p, imgs.astype(jnp.uint8), logits)
  assert int(p.count) == 3 and int(p.cursor) == 3
  np.testing.assert_array_equal(p.labels[:3], [2, 0, 1])
  p = datafree.add(p, (imgs + 10).astype(jnp.uint8), logits)   # 3 more: wraps over rows 0
  assert int(p.count) == 5 and int(p.cursor) == 1
  np.testing.assert_array_equal(np.asarray(p.images[:, 0, 0, 0]), [12, 1, 2, 10, 11])
  hist = datafree.class_histogram(p, 3)
  np.testing.assert_allclose(hist, [2 / 5, 2 / 5, 1 / 5])   # labels [1, 0, 1, 2, 0]
  np.testing.assert_array_equal(datafree.valid_mask(p), [True] * 5)


def test_to_uint8_truncates_like_the_reference_png_writer():
  x = jnp.array([-0.5, 0.0, 0.5, 0.999, 1.0, 2.0])
  np.testing.assert_array_equal(datafree.to_uint8(x), [0, 0, 127, 254, 255, 255])


def test_entropy_of_uniform_and_point_mass():
  np.testing.assert_allclose(pool_lib.entropy(jnp.full((4,), 0.25)), np.log(4), rtol=1e-6)
  np.testing.assert_allclose(pool_lib.entropy(jnp.array([1.0, 0, 0])), 0.0, atol=1e-7)


def _schedule(**overrides):
  from kdjax.train.datafree import Schedule
  c = tiny_config()
  c.datafree.kd_steps, c.datafree.ep_steps, c.datafree.warmup = 3, 6, 1
  c.datafree.pool_capacity = 40
  c.train.epochs, c.train.batch_size = 4, 8
  for k, v in overrides.items():
    c.datafree[k] = v
  return Schedule(c, fresh_pool=False, syn_batch=16)


def test_schedule_rounds_steps_and_resume_points():
  s = _schedule()
  assert s.rounds_per_epoch == 2 and s.warmup_rounds == 2 and s.student_epochs == 3
  assert [s.steps_before(r) for r in range(5)] == [0, 0, 0, 3, 6]
  assert [s.pool_count(r) for r in range(4)] == [16, 32, 40, 40]
  # synthesis of round 3 done, its student steps half done -> redo round 3's rest
  assert s.resume_round(rounds_done=4, student_step=4) == 3
  assert s.resume_round(rounds_done=4, student_step=6) == 4
  assert s.resume_round(rounds_done=1, student_step=0) == 1   # warm-up: no student steps
  a, b = s.student_indices(3), s.student_indices(3)
  chex.assert_shape(a, (3, 8))
  np.testing.assert_array_equal(a, b)                      # a function of (seed, round)
  assert a.max() < 40 and not np.array_equal(a, s.student_indices(4))
  assert s.student_indices(0).max() < 16                   # only filled rows


def _datafree_config(method: str, teacher: str, **overrides):
  c = tiny_config()
  c.mode = 'datafree'
  c.teacher.checkpoint = teacher
  c.datafree.method = method
  c.datafree.kd_steps, c.datafree.ep_steps = 2, 2
  c.datafree.synthesis_batch_size = 16
  c.datafree.pool_capacity = 64
  c.datafree[method].g_steps = 2
  if method == 'cmi':
    c.datafree.cmi.n_neg, c.datafree.cmi.bank_size = 16, 64
  c.method.gamma, c.method.alpha, c.method.temperature = 0.0, 1.0, 20.0
  c.train.epochs, c.train.batch_size = 2, 16
  for key, value in overrides.items():
    *groups, name = key.split('__')
    node = c
    for g in groups:
      node = node[g]
    node[name] = value
  return c


@pytest.mark.parametrize('method', ['fast', pytest.param('deepinv', marks=pytest.mark.slow),
                                    pytest.param('dafl', marks=pytest.mark.slow),
                                    pytest.param('cmi', marks=pytest.mark.slow)])
def test_each_method_runs_end_to_end_and_never_reads_the_train_split(
    method, fake_teacher, tmp_path, monkeypatch):
  from kdjax.config import validate
  from kdjax.train import datafree as loop
  splits = []
  real = loop.load_split

  def spy(name, split, **kw):
    splits.append(split)
    return real(name, split, **kw)

  monkeypatch.setattr(loop, 'load_split', spy)
  c = _datafree_config(method, fake_teacher)
  validate(c)
  from kdjax.train import modes
  out = modes.run(c, str(tmp_path / 'run'))
  assert splits == ['test']
  meta, variables = export.load(str(tmp_path / 'run' / 'model'))
  assert meta['datafree'] == method and meta['model'] == 'resnet8'
  records = [r for r in _metrics(tmp_path / 'run') if 'epoch' in r]
  assert [r['epoch'] for r in records] == [1, 2]
  last = records[-1]
  assert last['pool/size'] == 32   # two rounds of 16 (DAFL: one round's 2 x 16)
  assert np.isfinite(last['synth/loss']) and np.isfinite(last['train/loss'])
  assert 0 <= last['pool/class_entropy'] <= np.log(4) + 1e-6
  assert os.path.exists(tmp_path / 'run' / 'synthetic' / 'epoch_0002.png')
  assert any('pool/classes' in r for r in _distributions(tmp_path / 'run'))
  assert out['last_accuracy'] == last['test/accuracy/student']


def _metrics(workdir):
  from kdjax.train.metrics import read_metrics
  return read_metrics(str(workdir))


def _distributions(workdir):
  import json
  with open(os.path.join(str(workdir), 'distributions.jsonl')) as f:
    return [json.loads(line) for line in f]


def test_synthesis_agrees_on_1_and_8_devices(fake_teacher):
  """One compiled Fast round on a mesh of 1 and of 8 devices: same images, same state."""
  from jax.sharding import Mesh
  from kdjax.models import create_model
  from kdjax.models.generator import create_generator
  from kdjax.train.assemble import load_teacher
  import ml_collections
  c = _datafree_config('fast', fake_teacher)
  teacher, t_vars, _ = load_teacher(c, 4)
  student = create_model('resnet8', 4)
  s_vars = student.init(jax.random.PRNGKey(1), jnp.zeros((1, 32, 32, 3)), train=False)
  results = []
  for devices in (jax.devices()[:1], jax.devices()[:8]):
    mesh = Mesh(np.array(devices), ('data',))
    ctx = datafree.SynthContext(
        teacher=teacher, student=student, generator=create_generator(256, 64, 32, 3),
        num_classes=4, image_shape=(32, 32, 3), mean=(0.5,) * 3, std=(0.25,) * 3,
        batch_size=16, rounds_per_epoch=1,
        config=ml_collections.FrozenConfigDict(c.datafree), mesh=mesh)
    synth = datafree.get_synthesizer('fast')
    state = synth.init(jax.random.PRNGKey(2), t_vars, ctx)
    run = datafree.build_synthesize(synth, ctx, 2, 0)
    state, images, metrics = run(state, t_vars, s_vars, jax.random.PRNGKey(3),
                                 jnp.asarray(0, jnp.int32))
    results.append((np.asarray(images), jax.tree.map(np.asarray, state), metrics))
  np.testing.assert_allclose(results[0][0], results[1][0], atol=2e-5)
  # the state went through Adam, whose normalised step turns a summation-order difference
  # in a near-zero gradient into a step of the other sign (meta lr = lr_g * g_steps): every
  # parameter and statistic within two meta steps, its typical (median) element within
  # float32 noise. Adam's moments hold raw gradients, sums over the batch and positions
  # that cancel and whose summation order differs with 8 devices: they are compared
  # relative to their own scale (on a 2-core AMD EPYC the first moment of a generator
  # BatchNorm scale is 1.2e-4 apart in median, of a bias of magnitude 250 0.009 at most)
  one_step = c.datafree.fast.lr_g * 2
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(results[0][1]),
                          jax.tree.leaves(results[1][1])):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    diff, scale = np.abs(a - b), np.abs(b)
    name = jax.tree_util.keystr(path)
    if 'meta_opt' in name:
      assert np.median(diff) <= 2e-5 + 5e-4 * np.median(scale), name
      assert diff.max() <= 2e-5 + 1e-3 * scale.max(), name
    else:
      assert diff.max() <= 2.02 * one_step + 2e-5, name
      assert np.median(diff) <= 2e-5 + 1e-4 * np.median(scale), name
  np.testing.assert_allclose(float(results[0][2]['loss']), float(results[1][2]['loss']),
                             rtol=1e-5)


def test_chunked_inner_loop_matches_one_compiled_round(fake_teacher):
  """steps_per_call only changes how the inner steps are dispatched, not the result."""
  from jax.sharding import Mesh
  from kdjax.models import create_model
  from kdjax.models.generator import create_generator
  from kdjax.train.assemble import load_teacher
  import ml_collections
  c = _datafree_config('deepinv', fake_teacher)
  teacher, t_vars, _ = load_teacher(c, 4)
  student = create_model('resnet8', 4)
  s_vars = student.init(jax.random.PRNGKey(1), jnp.zeros((1, 32, 32, 3)), train=False)
  ctx = datafree.SynthContext(
      teacher=teacher, student=student, generator=create_generator(256, 64, 32, 3),
      num_classes=4, image_shape=(32, 32, 3), mean=(0.5,) * 3, std=(0.25,) * 3,
      batch_size=8, rounds_per_epoch=1, config=ml_collections.FrozenConfigDict(c.datafree),
      mesh=Mesh(np.array(jax.devices()[:1]), ('data',)))
  synth = datafree.get_synthesizer('deepinv')
  outs = []
  for per_call in (0, 1):
    run = datafree.build_synthesize(synth, ctx, 2, per_call)
    _, images, metrics = run({}, t_vars, s_vars, jax.random.PRNGKey(3), jnp.asarray(0))
    outs.append((np.asarray(images), float(metrics['loss'])))
  np.testing.assert_allclose(outs[0][0], outs[1][0], atol=1e-5)
  np.testing.assert_allclose(outs[0][1], outs[1][1], rtol=1e-5)
  assert outs[0][0].min() >= 0 and outs[0][0].max() <= 1


def _cli(workdir: str, teacher: str) -> list[str]:
  return [sys.executable, '-m', 'kdjax.main', '--config', 'configs/datafree/fast.py:'
          'cifar10-wrn_40_2-wrn_16_1+smoke', '--workdir', workdir,
          f'--config.teacher.checkpoint={teacher}', '--config.teacher.model=',
          '--config.model.name=resnet8', '--config.data.name=fake',
          '--config.data.source=fake', '--config.data.fake_classes=4',
          '--config.train.epochs=3', '--config.datafree.warmup=0',
          '--config.datafree.fast.g_steps=4', '--config.train.progress=False']


def _env(tmp_path) -> dict[str, str]:
  return dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='',
              JAX_COMPILATION_CACHE_DIR=str(tmp_path / 'jax_cache'),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')


@pytest.mark.slow
def test_sigkill_mid_synthesis_resumes_bitwise(fake_teacher, tmp_path):
  """Killed just after epoch 1's line (epoch 2's synthesis is running), then again after
  the resumed run's epoch-2 line; the third start finishes. Same final student, bitwise."""
  ref = str(tmp_path / 'ref')
  subprocess.run(_cli(ref, fake_teacher), cwd=REPO, env=_env(tmp_path), check=True,
                 capture_output=True, text=True, timeout=900)
  run = str(tmp_path / 'run')
  log = tmp_path / 'log.txt'
  killed = 0
  for kill_after in ('epoch 1/3', 'epoch 2/3', None):
    with open(log, 'w') as out:
      proc = subprocess.Popen(_cli(run, fake_teacher), cwd=REPO, env=_env(tmp_path),
                              stdout=out, stderr=subprocess.STDOUT, text=True)
    if kill_after is None:
      assert proc.wait(timeout=900) == 0, log.read_text()
      break
    while proc.poll() is None and kill_after not in log.read_text():
      time.sleep(0.05)
    time.sleep(0.3)
    if proc.poll() is None:
      proc.send_signal(signal.SIGKILL)
      proc.wait()
      killed += 1
  assert killed == 2, log.read_text()
  assert 'resuming' in log.read_text()
  _, ref_vars = export.load(os.path.join(ref, 'model'))
  _, got_vars = export.load(os.path.join(run, 'model'))
  chex.assert_trees_all_equal(ref_vars, got_vars)


def test_kdci_over_a_datafree_method_rebuilds_from_the_pool(fake_teacher, tmp_path):
  """+KDCI on DAFL: the dictionary is built from the pool (prior sums to 1), both heads
  are evaluated and exported, and the prior is drawn next to the pool's histogram."""
  from kdjax.config import validate
  from kdjax.train import modes
  c = _datafree_config('dafl', fake_teacher, method__kdci__enabled=True,
                       method__kdci__pca_dim=8, method__kdci__num_prototypes=4)
  validate(c)
  modes.run(c, str(tmp_path / 'run'))
  meta, variables = export.load(str(tmp_path / 'run' / 'model'))
  assert meta['method'] == 'kd+kdci'
  kstate = variables['method']['state']['kdci']
  assert float(kstate['built']) == 1.0
  np.testing.assert_allclose(np.sum(kstate['prior']), 1.0, rtol=1e-5)
  last = [r for r in _metrics(tmp_path / 'run') if 'epoch' in r][-1]
  assert {'test/accuracy/kdci', 'test/accuracy/student'} <= set(last)
  assert os.path.exists(tmp_path / 'run' / 'synthetic' / 'distributions_0002.png')
  assert any('kdci/prior' in r for r in _distributions(tmp_path / 'run'))


class _NoBatchNorm:
  """A registered test-only model without BatchNorm (a linear classifier on pixels)."""

  @staticmethod
  def register():
    import flax.linen as nn
    from kdjax.models import registry

    class Linear(nn.Module):
      num_classes: int
      dtype: object = jnp.float32

      @nn.compact
      def __call__(self, x, train=False, preact=False):
        pooled = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes)(pooled), [pooled]

    if 'test_nobn_linear' not in registry.model_names():
      registry.register('test_nobn_linear')(lambda num_classes, dtype=jnp.float32:
                                            Linear(num_classes, dtype))

  @staticmethod
  def unregister():
    from kdjax.models import registry
    registry._MODELS.pop('test_nobn_linear', None)


@pytest.fixture(scope='module')
def nobn_teacher(tmp_path_factory):
  from kdjax.models import create_model
  _NoBatchNorm.register()
  model = create_model('test_nobn_linear', 4)
  v = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  path = str(tmp_path_factory.mktemp('nobn') / 'teacher')
  export.save(path, {'params': v['params'], 'batch_stats': {}, 'method': {}},
              {'model': 'test_nobn_linear', 'num_classes': 4, 'image_size': 32})
  yield path
  _NoBatchNorm.unregister()   # other tests iterate over the registered models


@pytest.mark.parametrize('overrides, message', [
    (dict(datafree__method='deepinversion'), "'datafree.method' is 'deepinversion'; accepted: cmi, dafl, deepinv, fast"),
    (dict(datafree__eval_split='train'), 'never reads the training data'),
    (dict(datafree__pool_capacity=10 ** 12), 'the pool needs'),
    (dict(datafree__ep_steps=3), 'must be a multiple of datafree.kd_steps'),
    (dict(datafree__warmup=2), 'leaves no epoch to train the student'),
    (dict(datafree__fast__meta='maml2'), "'datafree.fast.meta' is 'maml2'"),
    (dict(datafree__fast__lr_g=0.0), "'datafree.fast.lr_g' must be > 0"),
    (dict(datafree__pool_capacity=8), 'smaller than one synthesis round'),
    (dict(data__image_size=64), 'was trained on 32x32 images'),
])
def test_bad_datafree_configs_are_one_line_errors(overrides, message, fake_teacher):
  from kdjax.config import ConfigError, validate
  c = _datafree_config('fast', fake_teacher, **overrides)
  with pytest.raises(ConfigError) as err:
    validate(c)
  assert message in str(err.value) and '\n' not in str(err.value)


def test_batchnorm_statistics_need_a_teacher_with_batchnorm(nobn_teacher):
  from kdjax.config import ConfigError, validate
  with pytest.raises(ConfigError, match='has no BatchNorm layer; use datafree.method=dafl'):
    validate(_datafree_config('deepinv', nobn_teacher))
  validate(_datafree_config('dafl', nobn_teacher))   # DAFL needs no BN statistics
