"""Tests of kdjax.data: sources (digits, CIFAR archives, tfds, fake) and augmentation."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import SHARED
from kdjax.data import (DATASETS, ArrayDataset, DataError, augment, check_source, load_split,
                        normalize, random_crop_flip)
from kdjax.data import sources

# ---------------------------------------------------------------------------------------
# digits


@pytest.fixture(scope='module')
def digits():
  return {s: load_split('digits', s) for s in ('train', 'test')}


def test_digits_shapes_and_split_sizes(digits):
  train, test = digits['train'], digits['test']
  assert (len(train), len(test)) == (1438, 359)  # the sizes the docstring promises
  for ds in (train, test):
    assert isinstance(ds, ArrayDataset)
    chex.assert_shape(ds.images, (len(ds), 32, 32, 3))
    assert ds.images.dtype == np.uint8 and ds.labels.dtype == np.int32
    assert ds.num_classes == 10 and ds.name == 'digits'
    np.testing.assert_array_equal(np.unique(ds.labels), np.arange(10))
    # grayscale replicated to 3 channels, full uint8 range used
    np.testing.assert_array_equal(ds.images[..., 0], ds.images[..., 2])
    assert ds.images.max() == 255 and ds.images.min() == 0
  # stratified: every class is about 20% test
  frac = np.bincount(test.labels) / (np.bincount(train.labels) + np.bincount(test.labels))
  np.testing.assert_allclose(frac, 0.2, atol=0.01)
  # mean/std come from the train split and are shared by both splits
  assert train.mean == test.mean and train.std == test.std
  want = train.images.reshape(-1, 3).astype(np.float64) / 255
  np.testing.assert_allclose(train.mean, want.mean(0), rtol=1e-6)
  np.testing.assert_allclose(train.std, want.std(0), rtol=1e-6)


def test_digits_deterministic_and_disjoint(digits):
  again = load_split('digits', 'train')
  np.testing.assert_array_equal(again.images, digits['train'].images)
  np.testing.assert_array_equal(again.labels, digits['train'].labels)
  from sklearn.datasets import load_digits
  target = load_digits().target
  idx = sources._digits_split_indices(target)
  assert not set(idx['train']) & set(idx['test'])
  assert sorted(np.concatenate([idx['train'], idx['test']])) == list(range(len(target)))
  np.testing.assert_array_equal(target[idx['test']], digits['test'].labels)


def test_digits_image_size():
  ds = load_split('digits', 'test', image_size=16)
  chex.assert_shape(ds.images, (359, 16, 16, 3))
  # 8x8 -> 8x8 is the raw data rescaled to 0..255
  raw = load_split('digits', 'test', image_size=8)
  from sklearn.datasets import load_digits
  d = load_digits()
  idx = sources._digits_split_indices(d.target)['test']
  np.testing.assert_array_equal(raw.images[..., 1], np.round(d.images[idx] * 255 / 16))


# ---------------------------------------------------------------------------------------
# CIFAR archives, written here in the official format


def _pattern(n: int, offset: int) -> np.ndarray:
  """(n, 3, 32, 32) uint8 whose value tells channel, row, column and example apart."""
  i = np.arange(n)[:, None, None, None] + offset
  c = np.arange(3)[None, :, None, None]
  y = np.arange(32)[None, None, :, None]
  x = np.arange(32)[None, None, None, :]
  return ((i * 11 + c * 80 + y * 5 + x) % 256).astype(np.uint8)


def _write_cifar(root: Path, name: str, n: int = 6) -> tuple[Path, dict]:
  """Writes a tiny official-layout folder; returns it and the expected NHWC arrays."""
  layout = sources._CIFAR[name]
  folder = root / layout.folder
  folder.mkdir(parents=True)
  expected = {}
  offset = 0
  for split, files in layout.files.items():
    imgs, labels = [], []
    for f in files:
      chw = _pattern(n, offset)
      lab = [(offset + k) % layout.num_classes for k in range(n)]
      offset += n
      batch = {b'data': chw.reshape(n, 3072), layout.label_key: lab, b'filenames': [b'x'] * n}
      if name == 'cifar100':
        batch[b'coarse_labels'] = [0] * n
      (folder / f).write_bytes(pickle.dumps(batch, protocol=2))
      imgs.append(chw.transpose(0, 2, 3, 1))
      labels.append(lab)
    expected[split] = (np.concatenate(imgs), np.concatenate(labels))
  (folder / layout.meta).write_bytes(pickle.dumps({b'label_names': []}))
  return folder, expected


def _tar(folder: Path, out: Path) -> Path:
  with tarfile.open(out, 'w:gz') as tar:
    tar.add(folder, arcname=folder.name)
  return out


@pytest.mark.parametrize('name', ['cifar10', 'cifar100'])
@pytest.mark.parametrize('form', ['folder', 'parent', 'tarball', 'parent_of_tarball'])
def test_cifar_archive_roundtrip(tmp_path, name, form):
  folder, expected = _write_cifar(tmp_path / 'src', name)
  if form == 'folder':
    path = folder
  elif form == 'parent':
    path = folder.parent
  else:
    (tmp_path / 'dl').mkdir()
    path = _tar(folder, tmp_path / 'dl' / sources._CIFAR[name].tarball)
    if form == 'parent_of_tarball':
      path = path.parent
  for split in ('train', 'test'):
    ds = load_split(name, split, path=str(path))  # auto -> archive because of the path
    images, labels = expected[split]
    assert ds.images.dtype == np.uint8 and ds.labels.dtype == np.int32
    np.testing.assert_array_equal(ds.images, images)
    np.testing.assert_array_equal(ds.labels, labels)
    assert ds.num_classes == {'cifar10': 10, 'cifar100': 100}[name]
    assert ds.mean == sources._CIFAR_STATS[name][0] and ds.std == sources._CIFAR_STATS[name][1]
  assert len(load_split(name, 'train', source='archive', path=str(path))) == (30 if name == 'cifar10' else 6)


def test_cifar_archive_reshape_is_channel_major(tmp_path):
  folder, _ = _write_cifar(tmp_path, 'cifar100', n=1)
  img = load_split('cifar100', 'train', path=str(folder)).images[0]
  # pixel (y=2, x=7) of channel 1 of example 0: 80 + 2*5 + 7
  assert img[2, 7, 1] == 97 and img[7, 2, 1] == 80 + 35 + 2 and img[2, 7, 0] == 17


def test_cifar_archive_resize(tmp_path):
  folder, _ = _write_cifar(tmp_path, 'cifar10', n=2)
  ds = load_split('cifar10', 'test', path=str(folder), image_size=16)
  chex.assert_shape(ds.images, (2, 16, 16, 3))


def test_cifar_archive_errors(tmp_path):
  with pytest.raises(DataError, match='does not exist'):
    load_split('cifar100', 'train', source='archive', path=str(tmp_path / 'nope'))
  with pytest.raises(DataError, match='needs --config.data.path'):
    load_split('cifar100', 'train', source='archive', path='')
  (tmp_path / 'junk').mkdir()
  (tmp_path / 'junk' / 'readme.txt').write_text('hi')
  with pytest.raises(DataError, match=r'wrong layout.*train, test, meta.*readme.txt'):
    load_split('cifar100', 'train', source='archive', path=str(tmp_path / 'junk'))
  with pytest.raises(DataError, match=r'data_batch_1.*test_batch'):
    check_source('cifar10', 'archive', str(tmp_path / 'junk'))
  with pytest.raises(DataError, match="reads cifar10 or cifar100"):
    check_source('stl10', 'archive', str(tmp_path / 'junk'))


def test_cifar_archive_damaged(tmp_path):
  folder, _ = _write_cifar(tmp_path / 'a', 'cifar100')
  (folder / 'train').write_bytes(b'\x80\x02garbage')
  with pytest.raises(DataError, match='not a readable CIFAR pickle'):
    load_split('cifar100', 'train', path=str(folder))
  # cifar10 pickles read as cifar100: no fine labels
  c10, _ = _write_cifar(tmp_path / 'b', 'cifar10')
  for f in ('train', 'test'):
    os.link(c10 / 'data_batch_1', c10 / f)
  with pytest.raises(DataError, match='fine_labels'):
    load_split('cifar100', 'test', path=str(c10))
  # a tarball that is not one, and one missing the test batch
  bad = tmp_path / 'cifar-10-python.tar.gz'
  bad.write_bytes(b'not a tarball')
  with pytest.raises(DataError, match='not a readable tar archive'):
    load_split('cifar10', 'train', path=str(bad))
  os.remove(c10 / 'test_batch')
  tarball = _tar(c10, tmp_path / 'partial.tar.gz')
  with pytest.raises(DataError, match='lacks test_batch'):
    load_split('cifar10', 'test', path=str(tarball))


# ---------------------------------------------------------------------------------------
# names, sources, check_source


def test_unknown_source_name_split():
  with pytest.raises(DataError, match='unknown data source'):
    check_source('cifar100', 'kaggle', '')
  with pytest.raises(DataError, match='unknown data source'):
    load_split('digits', 'train', source='kaggle')
  with pytest.raises(DataError, match="unknown dataset 'no_such_dataset_xyz'"):
    check_source('no_such_dataset_xyz', 'auto', '')
  with pytest.raises(DataError, match="only provides 'digits'"):
    check_source('cifar10', 'builtin', '')
  with pytest.raises(DataError, match="only provides the dataset 'fake'"):
    check_source('digits', 'fake', '')
  with pytest.raises(DataError, match='unknown split'):
    load_split('digits', 'validation')
  assert {'digits', 'fake', 'cifar10', 'cifar100'} <= set(DATASETS)
  assert issubclass(DataError, ValueError)


def test_check_source_accepts_good_choices(tmp_path):
  folder, _ = _write_cifar(tmp_path, 'cifar10', n=1)
  check_source('digits', 'auto', '')
  check_source('fake', 'auto', '')
  check_source('cifar10', 'auto', str(folder))
  check_source('cifar100', 'tfds', '')
  check_source('stl10', 'auto', '')


# ---------------------------------------------------------------------------------------
# tfds (mocked: no network, no tensorflow needed)


@pytest.mark.parametrize('name,channels_equal', [('stl10', False), ('mnist', True)])
def test_tfds_resizes_and_makes_rgb(name, channels_equal):
  sources._TFDS_STATS.clear()
  with tfds.testing.mock_data(num_examples=5, policy=tfds.testing.MockPolicy.USE_CODE):
    ds = load_split(name, 'test', source='tfds')  # stl10 is 96x96, mnist 28x28x1
  chex.assert_shape(ds.images, (5, 32, 32, 3))
  assert ds.images.dtype == np.uint8 and ds.labels.dtype == np.int32 and ds.num_classes == 10
  assert np.array_equal(ds.images[..., 0], ds.images[..., 1]) == channels_equal
  assert all(0 < m < 1 for m in ds.mean) and all(0 < s < 1 for s in ds.std)


def test_tfds_download_failure_is_a_data_error(tmp_path, monkeypatch):
  real_builder = tfds.builder

  def offline_builder(*args, **kwargs):
    builder = real_builder(*args, **kwargs)

    def fail(**_):
      raise ConnectionError('Failed to resolve www.cs.toronto.edu')
    builder.download_and_prepare = fail
    return builder

  monkeypatch.setattr(tfds, 'builder', offline_builder)
  with pytest.raises(DataError, match=r'cifar10 is not in .* cannot be downloaded: '
                                      r'ConnectionError.*source=archive'):
    load_split('cifar10', 'train', source='tfds', path=str(tmp_path))


def test_tfds_tfrecord_without_tensorflow_says_what_to_install(tmp_path, monkeypatch):
  real_builder = tfds.builder

  def prepared_tfrecord_builder(*args, **kwargs):
    builder = real_builder(*args, **kwargs)
    builder.is_prepared = lambda: True

    def refuse(**_):
      raise NotImplementedError('random access needs array_record')
    builder.as_data_source = refuse
    return builder

  monkeypatch.setattr(tfds, 'builder', prepared_tfrecord_builder)
  monkeypatch.setattr(sources, '_has_tensorflow', lambda: False)
  with pytest.raises(DataError, match=r"stored as tfrecord.*pip install 'kdjax\[tfds\]'"):
    load_split('cifar100', 'test', source='tfds', path=str(tmp_path))


# ---------------------------------------------------------------------------------------
# fake


def test_fake_deterministic_and_learnable():
  train = load_split('fake', 'train', fake_examples=300, fake_classes=6, seed=3)
  test = load_split('fake', 'test', fake_examples=120, fake_classes=6, seed=3)
  chex.assert_shape(train.images, (300, 32, 32, 3))
  assert train.num_classes == 6 and set(train.labels) == set(range(6))
  again = load_split('fake', 'train', fake_examples=300, fake_classes=6, seed=3)
  np.testing.assert_array_equal(again.images, train.images)
  other = load_split('fake', 'train', fake_examples=300, fake_classes=6, seed=4)
  assert not np.array_equal(other.images, train.images)
  same_size_test = load_split('fake', 'test', fake_examples=300, fake_classes=6, seed=3)
  assert not np.array_equal(same_size_test.images, train.images)
  assert not np.array_equal(same_size_test.labels, train.labels)
  # class structure shared across splits: a nearest-class-mean classifier fit on train
  # is nearly perfect on test
  x_tr = train.images.reshape(300, -1).astype(np.float32)
  x_te = test.images.reshape(120, -1).astype(np.float32)
  means = np.stack([x_tr[train.labels == c].mean(0) for c in range(6)])
  assert np.min(np.linalg.norm(means[:, None] - means[None], axis=-1) + 1e9 * np.eye(6)) > 1000
  pred = np.argmin(((x_te[:, None] - means[None]) ** 2).sum(-1), axis=1)
  assert (pred == test.labels).mean() > 0.95


# ---------------------------------------------------------------------------------------
# augmentation


def _images(b=16, h=8, w=8, seed=0, dtype=np.uint8):
  # distinct nonzero values so that any crop/flip is identifiable
  x = np.random.default_rng(seed).permutation(b * h * w * 3) % 250 + 1
  return x.reshape(b, h, w, 3).astype(dtype)


def test_crop_flip_shape_dtype_determinism():
  x = jnp.asarray(_images())
  key = jax.random.key(0)
  fn = jax.jit(random_crop_flip, static_argnames=('padding', 'flip'))
  out = fn(key, x)
  chex.assert_shape(out, x.shape)
  assert out.dtype == jnp.uint8
  np.testing.assert_array_equal(out, fn(key, x))
  assert not np.array_equal(out, fn(jax.random.key(1), x))
  xf = x.astype(jnp.float32)
  out_f = random_crop_flip(key, xf)
  assert out_f.dtype == jnp.float32
  np.testing.assert_array_equal(out_f, out.astype(jnp.float32))
  np.testing.assert_array_equal(random_crop_flip(key, x, padding=0, flip=False), x)


def _find_transform(src: np.ndarray, out: np.ndarray, padding: int) -> list[tuple[int, int, bool]]:
  """All (dy, dx, flipped) whose numpy reference crop equals `out`."""
  h, w, _ = src.shape
  padded = np.pad(src, ((padding, padding), (padding, padding), (0, 0)))
  found = []
  for dy in range(2 * padding + 1):
    for dx in range(2 * padding + 1):
      crop = padded[dy:dy + h, dx:dx + w]
      for flipped in (False, True):
        if np.array_equal(crop[:, ::-1] if flipped else crop, out):
          found.append((dy, dx, flipped))
  return found


def test_crop_flip_matches_numpy_reference():
  x = _images(b=64)
  out = np.asarray(random_crop_flip(jax.random.key(7), jnp.asarray(x), padding=2))
  transforms = []
  for src, o in zip(x, out):
    found = _find_transform(src, o, padding=2)
    assert len(found) == 1, 'every output must be exactly one padded crop, maybe flipped'
    transforms.append(found[0])
  dys, dxs, flips = zip(*transforms)
  # offsets cover [0, 2p] and about half are flipped
  assert set(dys) == set(range(5)) and set(dxs) == set(range(5))
  assert 16 < sum(flips) < 48
  # a flipped crop, recomputed by hand
  i = flips.index(True)
  dy, dx, _ = transforms[i]
  ref = np.pad(x[i], ((2, 2), (2, 2), (0, 0)))[dy:dy + 8, dx:dx + 8][:, ::-1]
  np.testing.assert_array_equal(out[i], ref)
  # flip=False never flips; padding=0 only flips
  no_flip = np.asarray(random_crop_flip(jax.random.key(7), jnp.asarray(x), padding=2, flip=False))
  assert not any(_find_transform(s, o, 2)[0][2] for s, o in zip(x, no_flip))
  only_flip = np.asarray(random_crop_flip(jax.random.key(7), jnp.asarray(x), padding=0))
  assert all(np.array_equal(o, s) or np.array_equal(o, s[:, ::-1]) for s, o in zip(x, only_flip))


def test_crop_pads_with_black_borders():
  x = jnp.full((32, 12, 12, 3), 255, jnp.uint8)
  out = np.asarray(random_crop_flip(jax.random.key(3), x, padding=4))
  assert set(np.unique(out)) <= {0, 255} and (out == 0).any()
  for o in out:
    zero_rows = (o == 0).all(axis=(1, 2))
    zero_cols = (o == 0).all(axis=(0, 2))
    # black pixels are exactly the union of whole border rows and columns ...
    np.testing.assert_array_equal(o[..., 0] == 0, zero_rows[:, None] | zero_cols[None, :])
    # ... on one side only, at most `padding` wide
    for zeros in (zero_rows, zero_cols):
      k = zeros.sum()
      assert k <= 4 and (zeros[:k].all() or zeros[len(zeros) - k:].all())


def test_normalize_and_augment_values():
  x = jnp.asarray([[[[0, 128, 255]]]], jnp.uint8)
  mean, std = (0.5, 0.25, 0.1), (0.5, 0.25, 0.2)
  out = normalize(x, mean, std)
  assert out.dtype == jnp.float32
  want = (np.array([0, 128, 255]) / 255 - np.array(mean)) / np.array(std)
  np.testing.assert_allclose(np.asarray(out)[0, 0, 0], want, rtol=1e-6)
  imgs = jnp.asarray(_images())
  key = jax.random.key(5)
  aug = jax.jit(augment, static_argnames=('padding', 'flip'))(key, imgs, mean, std)
  np.testing.assert_allclose(aug, normalize(random_crop_flip(key, imgs), mean, std), atol=1e-6)
  np.testing.assert_allclose(augment(key, imgs, mean, std, padding=0, flip=False),
                             normalize(imgs, mean, std), atol=1e-6)


def test_augment_same_on_1_and_8_devices():
  # fresh process: the device count is fixed when jax starts
  code = textwrap.dedent('''
    import numpy as np, jax, jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from kdjax.data import random_crop_flip
    assert jax.device_count() == 8
    x = jnp.asarray(np.random.default_rng(0).integers(0, 256, (16, 8, 8, 3), np.uint8))
    key = jax.random.key(11)
    single = jax.jit(random_crop_flip, device=jax.devices()[0])(key, x)
    mesh = Mesh(np.array(jax.devices()), ('data',))
    xs = jax.device_put(x, NamedSharding(mesh, P('data')))
    sharded = jax.jit(random_crop_flip, out_shardings=NamedSharding(mesh, P('data')))(key, xs)
    assert len(sharded.sharding.device_set) == 8
    np.testing.assert_array_equal(np.asarray(single), np.asarray(sharded))
    print('OK')
  ''')
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu')
  res = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                       timeout=300)
  assert res.returncode == 0 and 'OK' in res.stdout, res.stderr[-3000:]


# ---------------------------------------------------------------------------------------
# the real CIFAR-100 (../shared/data), unpacked once per module

CIFAR100_PACK = SHARED / 'data' / 'cifar100'


@pytest.fixture(scope='module')
def real_cifar100(tmp_path_factory):
  unpack = CIFAR100_PACK / 'unpack.py'
  if not unpack.exists():
    pytest.skip(f'real CIFAR-100 pack {CIFAR100_PACK} not found (needs the ../shared checkout; '
                'set KDJAX_SHARED to its path)')
  out = tmp_path_factory.mktemp('cifar100')
  res = subprocess.run([sys.executable, str(unpack), str(out)], capture_output=True, text=True,
                       timeout=600)
  assert res.returncode == 0, res.stdout + res.stderr
  return out / 'cifar-100-python'


@pytest.mark.slow
def test_real_cifar100(real_cifar100):
  train = load_split('cifar100', 'train', source='archive', path=str(real_cifar100))
  test = load_split('cifar100', 'test', path=str(real_cifar100.parent))
  assert (len(train), len(test)) == (50000, 10000)
  assert train.num_classes == test.num_classes == 100
  np.testing.assert_array_equal(np.bincount(train.labels, minlength=100), 500)
  np.testing.assert_array_equal(np.bincount(test.labels, minlength=100), 100)
  chex.assert_shape(train.images, (50000, 32, 32, 3))
  # the customary constants are this train split's statistics (in RGB order)
  mean, std = sources._channel_stats(train.images)
  np.testing.assert_allclose(mean, train.mean, atol=5e-4)
  np.testing.assert_allclose(std, train.std, atol=5e-4)


def test_subset_is_fixed_whatever_the_seed(digits):
  train = digits['train']
  a, b = train.subset(100), train.subset(100)
  np.testing.assert_array_equal(a.labels, b.labels)
  np.testing.assert_array_equal(a.images, b.images)
  assert len(a) == 100 and a.num_classes == train.num_classes
  # a real subset: every kept (image, label) pair is one of the originals
  pairs = {(img.tobytes(), int(y)) for img, y in zip(train.images, train.labels)}
  assert all((img.tobytes(), int(y)) in pairs for img, y in zip(a.images, a.labels))
  assert len(set(a.labels.tolist())) == train.num_classes
  with pytest.raises(DataError, match='has 1438'):
    train.subset(len(train) + 1)
