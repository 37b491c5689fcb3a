"""The streaming pipeline: sources (image folder, Tiny-ImageNet layout, tfds mock data),
the torchvision crops, the per-process feed on 8 simulated devices, and training through
it with a preemption that resumes onto bitwise the same parameters."""
from __future__ import annotations

import importlib.util
import os
import signal
import sys

import chex
import jax
import numpy as np
import pytest
from PIL import Image

from conftest import tiny_config
from kdjax.data import streaming
from kdjax.data.sources import DataError
from kdjax.train.mesh import make_mesh

# the sources and crops are plain numpy / PIL; the feed and anything training needs grain
needs_grain = pytest.mark.skipif(
    importlib.util.find_spec('grain') is None,
    reason="the streaming pipeline needs grain (pip install 'kdjax[streaming]')")

SIZES = ((40, 52), (33, 30), (64, 48), (29, 61))  # (width, height): varied on purpose


def write_image_folder(root, classes=2, train_per_class=12, val_per_class=5, seed=0) -> str:
  """``root/{train,val}/class_c/*``: JPEGs and a few PNGs (one grayscale) of varied sizes,
  each class a colour so that a model can learn it."""
  rng = np.random.default_rng(seed)
  for split, n in (('train', train_per_class), ('val', val_per_class)):
    for c in range(classes):
      folder = os.path.join(root, split, f'class_{c}')
      os.makedirs(folder, exist_ok=True)
      colour = np.array([255 * (c % 2), 128, 255 * (1 - c % 2)], np.float32)
      for i in range(n):
        w, h = SIZES[i % len(SIZES)]
        img = np.clip(colour + rng.normal(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)
        if i % 5 == 3:
          Image.fromarray(img[..., 0]).save(os.path.join(folder, f'{i:03d}.png'))
        elif i % 5 == 4:
          Image.fromarray(img).save(os.path.join(folder, f'{i:03d}.png'))
        else:
          Image.fromarray(img).save(os.path.join(folder, f'{i:03d}.JPEG'), quality=90)
  return str(root)


def streaming_config(root, **overrides):
  settings = dict(data__pipeline='streaming', data__source='folder', data__name='folder',
                  data__path=str(root), data__image_size=32, data__crop_padding=0,
                  data__workers=2)
  return tiny_config(**{**settings, **overrides})


def _split(root, split='train', size=32, seed=0, **kw):
  c = streaming_config(root, data__image_size=size, **kw)
  return streaming.load_streaming(c.data, split, seed)


# --- sources ----------------------------------------------------------------------------

def test_image_folder_lists_classes_labels_and_splits(tmp_path):
  root = write_image_folder(tmp_path, classes=3, train_per_class=4, val_per_class=2)
  train, val = streaming.image_folder(root, 'train'), streaming.image_folder(root, 'test')
  assert len(train) == 12 and len(val) == 6
  np.testing.assert_array_equal(train.labels, np.repeat([0, 1, 2], 4))
  assert all(f'class_{l}' in path for path, l in zip(val.files, val.labels))
  data, label = train[5]
  assert isinstance(data, bytes) and label == 1


def write_tiny_imagenet(parent, wnids=('n02', 'n01'), train_per_class=3, val_per_class=1):
  """A miniature of the published tiny-imagenet-200/ layout (64x64 JPEGs, one colour per
  class); wnids.txt lists the classes unsorted, as the real file does."""
  root = parent / 'tiny-imagenet-200'
  (root / 'val' / 'images').mkdir(parents=True)
  (root / 'wnids.txt').write_text('\n'.join(wnids) + '\n')
  rng, rows = np.random.default_rng(0), []
  for c, w in enumerate(wnids):
    (root / 'train' / w / 'images').mkdir(parents=True)
    colour = np.array([255 * (c % 2), 128, 255 * (1 - c % 2)], np.float32)
    image = lambda: Image.fromarray(
        np.clip(colour + rng.normal(0, 30, (64, 64, 3)), 0, 255).astype(np.uint8))
    for i in range(train_per_class):
      image().save(root / 'train' / w / 'images' / f'{w}_{i}.JPEG')
    for i in range(val_per_class):
      image().save(root / 'val' / 'images' / f'val_{w}_{i}.JPEG')
      rows.append(f'val_{w}_{i}.JPEG\t{w}\t0\t0\t63\t63')
  (root / 'val' / 'val_annotations.txt').write_text('\n'.join(rows) + '\n')
  return root


def test_tiny_imagenet_layout(tmp_path):
  root = write_tiny_imagenet(tmp_path)
  train = streaming.tiny_imagenet(str(tmp_path), 'train')  # the parent folder works too
  val = streaming.tiny_imagenet(str(root), 'test')
  np.testing.assert_array_equal(train.labels, [0, 0, 0, 1, 1, 1])
  assert all('/n01/' in f for f in train.files[:3])
  assert [os.path.basename(f) for f in val.files] == ['val_n01_0.JPEG', 'val_n02_0.JPEG']
  np.testing.assert_array_equal(val.labels, [0, 1])
  with pytest.raises(DataError, match='wnids.txt'):
    streaming.tiny_imagenet(str(tmp_path / 'tiny-imagenet-200' / 'train'), 'train')


def test_tfds_mock_source_streams_imagenet2012():
  tfds = pytest.importorskip('tensorflow_datasets',
                             reason='the tfds source needs tensorflow-datasets')
  c = streaming_config('', data__source='tfds', data__name='imagenet2012', data__image_size=24)
  with tfds.testing.mock_data(num_examples=6):
    train = streaming.load_streaming(c.data, 'train', 0)
    val = streaming.load_streaming(c.data, 'test', 0)
    assert train.num_classes == 1000 and len(train) == 6 and len(val) == 6
    image, label = train.example(3, epoch=0)
    chex.assert_shape(image, (24, 24, 3))
    assert image.dtype == np.uint8 and 0 <= label < 1000
    np.testing.assert_array_equal(val.example(2, 0)[0], val.example(2, 5)[0])
  assert train.mean == (0.485, 0.456, 0.406)


@needs_grain
def test_training_streams_tfds_mock_imagenet2012(tmp_path):
  tfds = pytest.importorskip('tensorflow_datasets',
                             reason='the tfds source needs tensorflow-datasets')
  from kdjax.config import validate
  from kdjax.train.modes import run as train
  c = streaming_config('', data__source='tfds', data__name='imagenet2012',
                       train__batch_size=8, train__eval_batch_size=8, train__epochs=1)
  with tfds.testing.mock_data(num_examples=16):
    validate(c)
    summary = train(c, str(tmp_path / 'run'))
  assert np.isfinite(summary['test/loss']) and 0 <= summary['last_accuracy'] <= 1


def test_bad_streaming_config_is_one_line(tmp_path, monkeypatch):
  from kdjax.config import ConfigError, validate
  with pytest.raises(ConfigError, match="needs --config.data.path=FOLDER"):
    validate(streaming_config(tmp_path / 'missing'))
  (tmp_path / 'train' / 'only').mkdir(parents=True)
  with pytest.raises(ConfigError, match='one sub-directory per class'):
    validate(streaming_config(tmp_path))
  with pytest.raises(ConfigError, match="data.pipeline 'streaming' reads data.source"):
    validate(streaming_config(tmp_path, data__source='archive'))
  with pytest.raises(ConfigError, match="'data.train_crop'"):
    validate(streaming_config(tmp_path, data__train_crop='centre'))
  with pytest.raises(ConfigError, match="'data.train_examples' subsets in-memory data only"):
    validate(streaming_config(tmp_path, data__train_examples=10))
  with pytest.raises(ConfigError, match="'data.pipeline' is 'disk'; accepted: memory, streaming"):
    validate(streaming_config(tmp_path, data__pipeline='disk'))
  root = write_image_folder(tmp_path / 'ok', train_per_class=1, val_per_class=1)
  monkeypatch.setitem(sys.modules, 'grain', None)  # as if it were not installed
  with pytest.raises(ConfigError, match=r"needs grain: pip install 'kdjax\[streaming\]'"):
    validate(streaming_config(root))


# --- transforms -------------------------------------------------------------------------

def test_random_resized_box_follows_torchvision_bounds():
  rng = np.random.default_rng(0)
  areas, ratios = [], []
  for _ in range(2000):
    left, top, w, h = streaming.random_resized_box(rng, 500, 375, 0.08)
    assert 0 <= left and left + w <= 500 and 0 <= top and top + h <= 375
    areas.append(w * h / (500 * 375))
    ratios.append(w / h)
  assert 0.07 < min(areas) < 0.12 and max(areas) > 0.9  # uniform area in [0.08, 1]
  assert min(ratios) > 0.74 and max(ratios) < 1.36
  # a 10:1 strip never fits the ratio range: centre crop with the ratio clamped to 4/3
  assert streaming.random_resized_box(rng, 1000, 100, 0.9) == (433, 0, 133, 100)


def test_eval_transform_is_resize_then_centre_crop():
  # 64 x 32 (w x h), left half black, right half white; S = 16 at fraction 0.5:
  # shorter side 32 stays, the centre 16 x 16 crop straddles the edge at column 8
  img = np.zeros((32, 64, 3), np.uint8)
  img[:, 32:] = 255
  out = streaming.apply_transform(img, streaming.Transform(16, train=False,
                                                           eval_crop_fraction=0.5), None)
  chex.assert_shape(out, (16, 16, 3))
  assert (out[:, :8] == 0).all() and (out[:, 8:] == 255).all()


def test_examples_depend_only_on_seed_epoch_index(tmp_path):
  root = write_image_folder(tmp_path)
  split = _split(root)
  a, la = split.example(5, epoch=1)
  b, lb = _split(root).example(5, epoch=1)
  np.testing.assert_array_equal(a, b)
  assert la == lb == int(split.labels[5])
  assert not np.array_equal(a, split.example(5, epoch=2)[0])
  assert not np.array_equal(a, _split(root, seed=1).example(5, epoch=1)[0])
  chex.assert_shape(a, (32, 32, 3))


# --- the feed -----------------------------------------------------------------------------

@needs_grain
def test_feed_batches_are_the_examples_sharded_over_8_devices(tmp_path):
  from kdjax.train.feed import make_feed
  from kdjax.train.batches import epoch_indices, eval_indices
  root = write_image_folder(tmp_path)
  mesh = make_mesh()
  assert jax.device_count() == 8
  train = _split(root)
  feed = make_feed('device', train, mesh, workers=3)
  assert not feed.gather
  chunks = epoch_indices(0, 2, len(train), 8).reshape(-1, 1, 8)
  batches = list(feed.epoch_inputs(2, chunks))
  assert len(batches) == len(chunks) == 3
  for c, (images, labels, idx) in zip(chunks, batches):
    chex.assert_shape(images, (1, 8, 32, 32, 3))
    assert len(images.sharding.device_set) == 8
    np.testing.assert_array_equal(idx, c)
    np.testing.assert_array_equal(labels, train.labels[c])
    for j, i in enumerate(c[0]):
      np.testing.assert_array_equal(images[0, j], train.example(int(i), 2)[0])

  test = _split(root, 'test')
  idx, mask = eval_indices(len(test), 8)  # 10 images: the second batch is padded
  seen = []
  for images, labels, m in make_feed('device', test, mesh).eval_batches(idx, mask):
    for j in np.flatnonzero(np.asarray(m)):
      seen.append(int(np.asarray(labels)[j]))
    assert (np.asarray(images)[np.asarray(m) == 0] == 0).all()
  assert sorted(seen) == sorted(test.labels.tolist()) and len(seen) == len(test)


@needs_grain
def test_a_process_reads_only_the_rows_its_devices_hold(tmp_path, monkeypatch):
  """Process 1 of 2 (owning mesh devices 4-7) decodes rows 4-7 of every batch and
  nothing else, in the order of the batches (the join across processes is replaced by
  returning the local rows)."""
  from kdjax.train.feed import make_feed
  from kdjax.train.batches import epoch_indices
  root = write_image_folder(tmp_path)
  train = _split(root)
  read = []
  original = streaming.FileSource.__getitem__

  def recording(self, index):
    read.append(int(index))
    return original(self, index)

  feed = make_feed('device', train, make_mesh(), workers=1)
  feed._owners = [0] * 4 + [1] * 4  # pylint: disable=protected-access
  monkeypatch.setattr(jax, 'process_index', lambda: 1)
  monkeypatch.setattr(feed, '_global', lambda local, shape, spec: local)
  monkeypatch.setattr(streaming.FileSource, '__getitem__', recording)
  chunks = epoch_indices(0, 0, len(train), 8).reshape(-1, 1, 8)
  batches = list(feed.epoch_inputs(0, chunks))
  np.testing.assert_array_equal(read, chunks[:, :, 4:].reshape(-1))
  for c, (images, labels, idx) in zip(chunks, batches):
    chex.assert_shape(images, (1, 4, 32, 32, 3))
    np.testing.assert_array_equal(idx, c[:, 4:])
    np.testing.assert_array_equal(labels, train.labels[c[:, 4:]])


@needs_grain
def test_training_through_the_stream_resumes_after_sigterm_onto_the_same_parameters(tmp_path):
  """Preempted mid-epoch (SIGTERM while the feed is reading), then run again: the final
  parameters equal an uninterrupted run's bitwise, so the resumed run saw the same batches."""
  from kdjax.train import export
  from kdjax.errors import Preempted
  from kdjax.train.modes import run as train
  root = write_image_folder(tmp_path / 'data', train_per_class=16)
  config = streaming_config(root, train__batch_size=8, train__epochs=2, data__flip=True)
  ref = train(config, str(tmp_path / 'ref'))
  assert ref['test/accuracy/student'] >= 0  # a real evaluation ran over the val folder

  reads = {'n': 0}
  original = streaming.FileSource.__getitem__

  def preempt_once(self, index):
    reads['n'] += 1
    if reads['n'] == 20:  # inside epoch 1, after a couple of steps were read
      os.kill(os.getpid(), signal.SIGTERM)
    return original(self, index)

  work = str(tmp_path / 'resumed')
  streaming.FileSource.__getitem__ = preempt_once
  try:
    with pytest.raises(Preempted, match='SIGTERM: saved step'):
      train(config, work)
  finally:
    streaming.FileSource.__getitem__ = original
  from kdjax.train.checkpoint import Checkpoints
  saved = Checkpoints(work, 2, print).latest_step()
  assert 0 < saved < 8  # 32 images / batch 8 = 4 steps per epoch: stopped inside the run
  train(config, work)
  _, want = export.load(str(tmp_path / 'ref' / 'model'))
  _, got = export.load(os.path.join(work, 'model'))
  chex.assert_trees_all_equal(got['params'], want['params'])
  chex.assert_trees_all_equal(got['batch_stats'], want['batch_stats'])
  # mode evaluate streams the val folder too: every image once, the run's own number
  from kdjax.train.modes import evaluate as evaluate_export
  config.mode, config.evaluate.checkpoint = 'evaluate', work
  result = evaluate_export(config)
  assert result['examples'] == 10
  assert result['accuracy/student'] == pytest.approx(ref['test/accuracy/student'])


# --- two processes ------------------------------------------------------------------------

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
@needs_grain
def test_two_processes_stream_like_one(tmp_path):
  """2 processes x 2 devices, each decoding only its rows, against 1 process x 4 devices:
  the same batches (one step per epoch, so the first epoch's loss is the first step's,
  before any update: equal to float32 rounding), the same evaluation over every
  validation image once, parameters equal up to the order of cross-process sums."""
  import json
  import socket
  import subprocess
  from kdjax.train import export
  root = write_image_folder(tmp_path / 'data', train_per_class=16)
  flags = ['--config', 'configs/default.py', '--config.mode=train', '--config.model.name=resnet8',
           '--config.data.pipeline=streaming', '--config.data.source=folder',
           '--config.data.name=folder', f'--config.data.path={root}',
           '--config.data.image_size=32', '--config.data.crop_padding=0',
           '--config.data.workers=2', '--config.train.batch_size=32',
           '--config.train.eval_batch_size=8', '--config.train.epochs=2',
           '--config.optim.schedule=constant', '--config.train.progress=False']
  pythonpath = os.pathsep.join(p for p in (os.environ.get('PYTHONPATH'), REPO) if p)

  def start(workdir, devices, extra):
    env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=pythonpath,
               XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
    return subprocess.Popen([sys.executable, '-m', 'kdjax.main', *flags, '--workdir', workdir,
                             *extra], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)

  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = s.getsockname()[1]
  pair_dir, single_dir = str(tmp_path / 'pair'), str(tmp_path / 'single')
  dist = ['--config.distributed.enabled=True', '--config.distributed.num_processes=2',
          f'--config.distributed.coordinator=localhost:{port}', '--config.distributed.timeout=120']
  procs = [start(pair_dir, 2, dist + [f'--config.distributed.process_id={p}']) for p in range(2)]
  procs.append(start(single_dir, 4, []))
  try:
    outs = [p.communicate(timeout=900) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert 'in 2 processes' in outs[0][0]

  def records(d):
    with open(os.path.join(d, 'metrics.jsonl')) as f:
      return [json.loads(line) for line in f]

  pair, single = records(pair_dir), records(single_dir)
  assert abs(pair[0]['train/loss'] - single[0]['train/loss']) <= 1e-5 * single[0]['train/loss']
  assert pair[-1]['test/accuracy/student'] == single[-1]['test/accuracy/student']
  _, a = export.load(single_dir)
  _, b = export.load(pair_dir)
  chex.assert_trees_all_close(a, b, rtol=1e-3, atol=1e-4)


@pytest.mark.slow
@needs_grain
def test_sigkill_and_restart_through_the_cli_ends_bitwise_equal(tmp_path):
  """The CLI killed (SIGKILL) inside the second epoch and restarted with the same command
  resumes from the last checkpoint onto the same batches: final parameters bitwise equal
  to an uninterrupted run's."""
  import subprocess
  import time
  from kdjax.train import export
  root = write_image_folder(tmp_path / 'data', train_per_class=16)
  pythonpath = os.pathsep.join(p for p in (os.environ.get('PYTHONPATH'), REPO) if p)
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=pythonpath, XLA_FLAGS='',
             JAX_COMPILATION_CACHE_DIR=str(tmp_path / 'jax_cache'),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')

  def command(workdir):
    return [sys.executable, '-m', 'kdjax.main', '--config', 'configs/default.py',
            '--workdir', workdir, '--config.mode=train', '--config.model.name=resnet8',
            '--config.data.pipeline=streaming', '--config.data.source=folder',
            '--config.data.name=folder', f'--config.data.path={root}',
            '--config.data.image_size=32', '--config.data.crop_padding=0',
            '--config.data.workers=2', '--config.train.batch_size=4',
            '--config.train.eval_batch_size=8', '--config.train.epochs=3',
            '--config.train.progress=False']

  ref = subprocess.run(command(str(tmp_path / 'ref')), cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=900)
  assert ref.returncode == 0, ref.stderr[-3000:]
  work = str(tmp_path / 'killed')
  log = tmp_path / 'killed.log'
  with open(log, 'w') as out:
    proc = subprocess.Popen(command(work), cwd=REPO, env=env, stdout=out,
                            stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 600
  # killed as soon as epoch 1's checkpoint (step 8) is complete: inside epoch 2, which with
  # a warm compilation cache takes well under a second
  first = os.path.join(work, 'checkpoints', '8')
  while proc.poll() is None and time.time() < deadline and not os.path.isdir(first):
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL, log.read_text()[-2000:]
  assert 'kdjax: done' not in log.read_text()
  again = subprocess.run(command(work), cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=900)
  assert again.returncode == 0, again.stderr[-3000:]
  assert 'resuming' in again.stdout
  _, want = export.load(str(tmp_path / 'ref' / 'model'))
  _, got = export.load(os.path.join(work, 'model'))
  chex.assert_trees_all_equal(got['params'], want['params'])
