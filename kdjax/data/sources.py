"""Datasets as whole in-memory uint8 arrays.

Every loader returns an :class:`ArrayDataset`: ``images`` uint8 (N, S, S, 3) NHWC with
S = ``image_size`` (32 by default), ``labels`` int32 (N,), plus the per-channel
normalisation constants that :func:`kdjax.data.augment.normalize` uses on device.

Known names (``DATASETS``) and their sources; ``source='auto'`` picks the first one,
except that a CIFAR name with a non-empty ``path`` means ``archive``:

==========  ================  ==========================================================
name        sources           notes
==========  ================  ==========================================================
digits      builtin           scikit-learn's bundled 8x8 digits (1797 real images, no
                              download); fixed stratified split: 1438 train / 359 test
                              (20% of each class, rounded); upsampled bilinearly.
fake        fake              synthetic, for tests only: a class-specific coarse colour
                              pattern plus noise; ``fake_examples`` per split.
cifar10     tfds, archive     archive: ``cifar-10-python.tar.gz``, the extracted
                              ``cifar-10-batches-py/`` folder, or its parent.
cifar100    tfds, archive     archive: ``cifar-100-python.tar.gz``, the extracted
                              ``cifar-100-python/`` folder, or its parent; fine labels.
stl10, ...  tfds              any tfds image classification dataset with an image and
                              a class label; resized (antialiased) to ``image_size``.
==========  ================  ==========================================================

Normalisation constants are the customary ones for CIFAR and otherwise computed from
the train split. Errors the user can fix raise :class:`DataError` with a one-line
message that says what is wrong and what to pass instead.

The CIFAR archives are pickles, which can run code when read; they are read with a
restricted unpickler that admits only what a CIFAR batch holds (dicts, lists, strings,
numbers and numpy arrays) and refuses anything else without running it.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import pickle
import tarfile

import numpy as np

from kdjax.errors import DataError

SPLITS = ('train', 'test')
SOURCES = ('auto', 'builtin', 'archive', 'tfds', 'fake')
DATASETS: dict[str, tuple[str, ...]] = {
    'digits': ('builtin',),
    'fake': ('fake',),
    'cifar10': ('tfds', 'archive'),
    'cifar100': ('tfds', 'archive'),
    'stl10': ('tfds',),
}

_CIFAR_STATS = {
    'cifar10': ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    'cifar100': ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}
# Constants other trainers used, by (dataset, name): a converted network is best run with
# the ones it was trained with. 'chenyaofo': github.com/chenyaofo/pytorch-cifar-models, the
# zoo of the shared CIFAR-100 teachers (their README); 'kd' is _CIFAR_STATS (RepDistiller).
_TRAINER_STATS = {
    ('cifar100', 'chenyaofo'): ((0.5070, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
NORMALIZATIONS = ('kd', 'chenyaofo')


# torchvision's ImageNet constants (also the default of streamed image folders) and
# Tiny-ImageNet's (methods.md §8)
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_LARGE_STATS = {'imagenet2012': IMAGENET_STATS, 'imagenet': IMAGENET_STATS,
                'tiny_imagenet': ((0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821))}



def known_normalization(name: str, trainer: str = 'kd'
                        ) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
  """The (mean, std) of a dataset as ``trainer`` normalised it ('kd': the customary
  constants of the KD protocol, torchvision's for ImageNet), if kdjax knows them."""
  if trainer == 'kd':
    return _LARGE_STATS.get(name) or _CIFAR_STATS.get(name)
  return _TRAINER_STATS.get((name, trainer))


@dataclasses.dataclass(frozen=True)
class _CifarLayout:
  folder: str       # name of the folder inside the official tarball
  tarball: str
  files: dict[str, tuple[str, ...]]  # split -> pickles holding it, in order
  meta: str
  label_key: bytes
  num_classes: int

  @property
  def all_files(self) -> tuple[str, ...]:
    return self.files['train'] + self.files['test'] + (self.meta,)


_CIFAR = {
    'cifar10': _CifarLayout(
        'cifar-10-batches-py', 'cifar-10-python.tar.gz',
        {'train': tuple(f'data_batch_{i}' for i in range(1, 6)), 'test': ('test_batch',)},
        'batches.meta', b'labels', 10),
    'cifar100': _CifarLayout(
        'cifar-100-python', 'cifar-100-python.tar.gz',
        {'train': ('train',), 'test': ('test',)}, 'meta', b'fine_labels', 100),
}


@dataclasses.dataclass(frozen=True)
class ArrayDataset:
  images: np.ndarray  # uint8 (N, H, W, 3)
  labels: np.ndarray  # int32 (N,)
  num_classes: int
  mean: tuple[float, float, float]  # per channel, in [0, 1] units
  std: tuple[float, float, float]
  name: str

  def __len__(self) -> int:
    return len(self.labels)

  def subset(self, n: int) -> 'ArrayDataset':
    """A fixed random ``n`` of the examples, the same whatever the run's seed, so that
    runs compared on a reduced budget see the same data."""
    if n > len(self):
      raise DataError(f'asked for {n} examples of {self.name}, which has {len(self)}')
    keep = np.sort(np.random.default_rng(0).permutation(len(self))[:n])
    return dataclasses.replace(self, images=self.images[keep], labels=self.labels[keep])


# ---------------------------------------------------------------------------------------
# Public entry points


# (training examples, classes) of the datasets whose size is known without reading them
_KNOWN_SIZES = {'cifar10': (50000, 10), 'cifar100': (50000, 100), 'stl10': (5000, 10)}


def known_size(name: str, fake_examples: int = 512, fake_classes: int = 10
               ) -> tuple[int, int] | None:
  """(training examples, classes) of a dataset, known before loading it (config checks:
  a batch larger than the data, a teacher of another class count), or None."""
  if name == 'fake':
    return fake_examples, fake_classes
  if name == 'digits':
    from sklearn.datasets import load_digits  # the labels only: milliseconds
    return len(_digits_split_indices(load_digits().target)['train']), 10
  return _KNOWN_SIZES.get(name)


def check_source(name: str, source: str, path: str) -> None:
  """Validates a (name, source, path) choice without loading anything.

  Meant for config check time, so that a typo fails in a second rather than after
  the teacher has been loaded.
  """
  source = _resolve_source(name, source, path)
  if source == 'builtin' and name != 'digits':
    raise DataError(f"source 'builtin' only provides 'digits', not {name!r}; "
                    "use --config.data.source=tfds or archive")
  if source == 'fake' and name != 'fake':
    raise DataError(f"source 'fake' only provides the dataset 'fake', not {name!r}")
  if source == 'archive':
    _find_cifar(name, path)
  if source == 'tfds':
    tfds = _import_tfds()
    try:
      tfds.builder_cls(name.split('/')[0].split(':')[0])
    except Exception:  # tfds raises DatasetNotFoundError (and others for odd names)
      raise DataError(_unknown_name_message(name)) from None
    if path and os.path.exists(path) and not os.path.isdir(path):
      raise DataError(f'tfds data_dir {path!r} is a file, not a directory; pass the folder '
                      'holding the prepared dataset (or leave --config.data.path empty)')


def load_split(name: str, split: str, *, source: str = 'auto', path: str = '',
               image_size: int = 32, fake_examples: int = 512, fake_classes: int = 10,
               seed: int = 0) -> ArrayDataset:
  """Loads one split ('train' or 'test') of a dataset whole into memory."""
  if split not in SPLITS:
    raise DataError(f'unknown split {split!r}; use one of {SPLITS}')
  if image_size < 1:
    raise DataError(f'image_size must be positive, got {image_size}')
  check_source(name, source, path)
  source = _resolve_source(name, source, path)
  if source == 'builtin':
    return _load_digits(split, image_size)
  if source == 'fake':
    return _load_fake(split, image_size, fake_examples, fake_classes, seed)
  if source == 'archive':
    return _load_cifar_archive(name, split, path, image_size)
  return _load_tfds(name, split, path, image_size)


def _resolve_source(name: str, source: str, path: str) -> str:
  if source not in SOURCES:
    raise DataError(f'unknown data source {source!r}; use one of {SOURCES}')
  if source != 'auto':
    return source
  if name in _CIFAR and path:
    return 'archive'
  return DATASETS.get(name, ('tfds',))[0]


def _unknown_name_message(name: str) -> str:
  return (f'unknown dataset {name!r}: not one of {sorted(DATASETS)} nor a tfds dataset '
          '(see https://www.tensorflow.org/datasets/catalog)')


# ---------------------------------------------------------------------------------------
# Shared helpers


def _resize(images: np.ndarray, size: int) -> np.ndarray:
  """Bilinear resize of uint8 (N, H, W, C) images; antialiased when shrinking.

  Pillow's bilinear filter widens its support when downsampling, which is the
  antialiasing torchvision users expect (STL-10 96 -> 32 would alias badly otherwise).
  """
  from PIL import Image  # pillow comes with matplotlib, a dependency

  if images.shape[1:3] == (size, size):
    return images
  out = np.empty((len(images), size, size, images.shape[-1]), np.uint8)
  for i, img in enumerate(images):
    pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
    out[i] = np.asarray(pil.resize((size, size), Image.BILINEAR)).reshape(size, size, -1)
  return out


def _to_rgb(images: np.ndarray) -> np.ndarray:
  """(N, H, W, 1 or 3) -> (N, H, W, 3)."""
  if images.shape[-1] == 1:
    images = np.repeat(images, 3, axis=-1)
  if images.shape[-1] != 3:
    raise DataError(f'expected grayscale or RGB images, got {images.shape[-1]} channels')
  return images


def _channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Per-channel mean/std in [0, 1] units, in chunks so 50k images need no float copy."""
  total = np.zeros(3)
  total_sq = np.zeros(3)
  for start in range(0, len(images), 4096):
    chunk = images[start:start + 4096].reshape(-1, 3).astype(np.float64) / 255.0
    total += chunk.sum(0)
    total_sq += np.square(chunk).sum(0)
  count = images.size // 3
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 1e-12))
  return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def _dataset(images, labels, num_classes, mean, std, name) -> ArrayDataset:
  if np.asarray(images).dtype != np.uint8:  # a cast would wrap 256 to 0 and truncate floats
    images = _integer_array(images, f'{name}: pixel values', 0, 255)
  images = np.ascontiguousarray(images, dtype=np.uint8)
  labels = _integer_array(labels, f'{name}: labels').reshape(-1)
  if len(images) != len(labels):
    raise DataError(f'{name}: {len(images)} images but {len(labels)} labels; the data is damaged')
  if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
    raise DataError(f'{name}: labels outside [0, {num_classes}); the data is damaged')
  return ArrayDataset(images, labels, int(num_classes), tuple(mean), tuple(std), name)


def _integer_array(values, what: str, low: int | None = None, high: int | None = None
                   ) -> np.ndarray:
  """``values`` as an int array, each in [low, high] when given; DataError otherwise
  (a damaged or crafted file must not be wrapped around silently, e.g. 300 -> 44)."""
  try:
    a = np.asarray(values)
  except (ValueError, TypeError) as e:  # ragged lists and the like
    raise DataError(f'{what} are not an array of integers ({e}); the data is damaged') from None
  if a.dtype == bool or not (np.issubdtype(a.dtype, np.integer) or a.size == 0):
    raise DataError(f'{what} must be integers, got {a.dtype} values; the data is damaged')
  if a.size and ((low is not None and a.min() < low) or (high is not None and a.max() > high)):
    raise DataError(f'{what} must lie in {low}..{high}, found {a.min()}..{a.max()}; the data '
                    'is damaged')
  return a.astype(np.int32) if high is None or high > 255 else a.astype(np.uint8)


# ---------------------------------------------------------------------------------------
# builtin: scikit-learn digits

_DIGITS_TEST_FRACTION = 0.2
_DIGITS_SPLIT_SEED = 0  # fixed so that every run and every user sees the same split


def _digits_split_indices(labels: np.ndarray) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(_DIGITS_SPLIT_SEED)
  train, test = [], []
  for c in np.unique(labels):
    idx = rng.permutation(np.flatnonzero(labels == c))
    n_test = int(round(_DIGITS_TEST_FRACTION * len(idx)))
    test.append(idx[:n_test])
    train.append(idx[n_test:])
  return {'train': np.sort(np.concatenate(train)), 'test': np.sort(np.concatenate(test))}


def _load_digits(split: str, image_size: int) -> ArrayDataset:
  from sklearn.datasets import load_digits

  digits = load_digits()
  # values are ink counts 0..16 on a 4x4 grid; scale to the full uint8 range
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
  images = _to_rgb(_resize(images[..., None], image_size))
  idx = _digits_split_indices(digits.target)
  mean, std = _channel_stats(images[idx['train']])
  return _dataset(images[idx[split]], digits.target[idx[split]], 10, mean, std, 'digits')


# ---------------------------------------------------------------------------------------
# fake: synthetic data for tests


def _load_fake(split: str, image_size: int, num_examples: int, num_classes: int,
               seed: int) -> ArrayDataset:
  """Each class is a random 4x4 colour pattern (shared by both splits, so the test
  split is learnable from the train split) upsampled to full size, plus pixel noise.
  """
  if num_examples < 1 or num_classes < 2:
    raise DataError(f'fake data needs fake_examples >= 1 and fake_classes >= 2, '
                    f'got {num_examples} and {num_classes}')
  protos = np.random.default_rng([seed, 0]).uniform(0, 255, (num_classes, 4, 4, 3))
  cell = -(-image_size // 4)
  protos = np.repeat(np.repeat(protos, cell, 1), cell, 2)[:, :image_size, :image_size]
  rng = np.random.default_rng([seed, 1 + SPLITS.index(split)])
  labels = rng.permutation(np.arange(num_examples) % num_classes)
  noise = rng.normal(0, 40, (num_examples, image_size, image_size, 3))
  images = np.clip(protos[labels] + noise, 0, 255).round().astype(np.uint8)
  # constants rather than statistics: the data is arbitrary anyway
  return _dataset(images, labels, num_classes, (0.5,) * 3, (0.25,) * 3, 'fake')


# ---------------------------------------------------------------------------------------
# archive: the official CIFAR python pickles


def _find_cifar(name: str, path: str) -> tuple[str, str]:
  """Returns ('tar', file) or ('dir', folder holding the pickles) for a CIFAR path."""
  if name not in _CIFAR:
    raise DataError(f"source 'archive' reads cifar10 or cifar100, not {name!r}; "
                    'use --config.data.source=tfds for other datasets')
  layout = _CIFAR[name]
  if not path:
    raise DataError(f'{name}: source archive needs --config.data.path pointing at '
                    f'{layout.tarball} or the extracted {layout.folder}/ folder')
  path = os.path.expanduser(path)
  if not os.path.exists(path):
    raise DataError(f'{name}: path {path!r} does not exist; pass {layout.tarball} or the '
                    f'extracted {layout.folder}/ folder (or its parent)')
  if os.path.isfile(path):
    return 'tar', path
  for folder in (path, os.path.join(path, layout.folder)):
    if all(os.path.isfile(os.path.join(folder, f)) for f in layout.files['train'] + layout.files['test']):
      return 'dir', folder
  if os.path.isfile(os.path.join(path, layout.tarball)):
    return 'tar', os.path.join(path, layout.tarball)
  found = sorted(os.listdir(path))[:8]
  raise DataError(
      f"{name}: {path!r} has the wrong layout: expected {layout.tarball}, or a "
      f"{layout.folder}/ folder with {', '.join(layout.all_files)} (or its parent); "
      f"found {found or 'nothing'}")


def _multiarray():
  return (getattr(np, '_core', None) or np.core).multiarray  # numpy >= 2 renamed numpy.core


def _latin1_bytes(text: str, encoding: str = 'latin1') -> bytes:
  """What ``_codecs.encode`` does in the pickles Python 3 writes at protocol 2 (bytes
  as latin-1 text), for that one encoding only."""
  if encoding != 'latin1':
    raise pickle.UnpicklingError(f'unexpected text encoding {encoding!r} in a CIFAR batch')
  return text.encode('latin1')


# Everything a CIFAR batch refers to: the official files hold numpy arrays (numpy 2 writes
# numpy._core), and copies re-pickled by Python 3 at protocol 2 encode bytes via _codecs.
_CIFAR_GLOBALS = {
    ('numpy.core.multiarray', '_reconstruct'): lambda: _multiarray()._reconstruct,
    ('numpy._core.multiarray', '_reconstruct'): lambda: _multiarray()._reconstruct,
    ('numpy.core.multiarray', 'scalar'): lambda: _multiarray().scalar,
    ('numpy._core.multiarray', 'scalar'): lambda: _multiarray().scalar,
    ('numpy', 'ndarray'): lambda: np.ndarray,
    ('numpy', 'dtype'): lambda: np.dtype,
    ('_codecs', 'encode'): lambda: _latin1_bytes,
}


class _CifarUnpickler(pickle.Unpickler):
  """Builds only dicts, lists, strings, numbers and numpy arrays: any other global (a
  function to call, a class to build) is refused before it is imported, so a crafted
  file cannot run code."""

  def find_class(self, module: str, name: str):
    make = _CIFAR_GLOBALS.get((module, name))
    if make is None:
      raise pickle.UnpicklingError(f'it refers to {module}.{name}, which a CIFAR batch never '
                                   'holds; refused without running it')
    return make()


def _unpickle(fileobj, where: str) -> dict:
  try:
    batch = _CifarUnpickler(fileobj, encoding='bytes').load()
  except Exception as e:  # noqa: BLE001 - a damaged pickle fails in any number of ways
    raise DataError(f'{where} is not a readable CIFAR pickle ({type(e).__name__}: {e}); '
                    're-download or re-extract the archive') from None
  if not isinstance(batch, dict) or b'data' not in batch:
    raise DataError(f"{where} is not a CIFAR batch (no b'data' entry); the file is damaged "
                    'or from another dataset')
  return batch


def _read_cifar_batches(name: str, split: str, path: str) -> list[tuple[str, dict]]:
  kind, where = _find_cifar(name, path)
  wanted = _CIFAR[name].files[split]
  if kind == 'dir':
    batches = []
    for f in wanted:
      with open(os.path.join(where, f), 'rb') as fh:
        batches.append((f, _unpickle(fh, os.path.join(where, f))))
    return batches
  found = {}
  try:
    with tarfile.open(where, 'r:*') as tar:
      # one sequential pass: seeking backwards in a .gz stream re-decompresses it
      for member in tar:
        base = os.path.basename(member.name)
        if member.isfile() and base in wanted and base not in found:
          found[base] = _unpickle(tar.extractfile(member), f'{where}:{member.name}')
  except (tarfile.TarError, EOFError, OSError) as e:
    raise DataError(f'{name}: {where!r} is not a readable tar archive ({e}); pass '
                    f'{_CIFAR[name].tarball} or the extracted {_CIFAR[name].folder}/ folder') from None
  missing = [f for f in wanted if f not in found]
  if missing:
    raise DataError(f"{name}: archive {where!r} lacks {', '.join(missing)}; expected the official "
                    f"{_CIFAR[name].tarball} ({_CIFAR[name].folder}/ with {', '.join(_CIFAR[name].all_files)})")
  return [(f, found[f]) for f in wanted]


def _load_cifar_archive(name: str, split: str, path: str, image_size: int) -> ArrayDataset:
  layout = _CIFAR[name]
  images, labels = [], []
  for fname, batch in _read_cifar_batches(name, split, path):
    data = _integer_array(batch[b'data'], f'{name}: the pixel values in {fname}', 0, 255)
    if layout.label_key not in batch or data.ndim != 2 or data.shape[1] != 3072:
      raise DataError(f"{name}: {fname} has no {layout.label_key!r} or its rows are not 3072 "
                      f'bytes; is this {layout.folder} and not the other CIFAR?')
    # each row is the R plane, then G, then B, each 32x32 row-major
    images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    labels.append(_integer_array(batch[layout.label_key], f'{name}: the labels in {fname}')
                  .reshape(-1))
  images = _resize(np.concatenate(images), image_size)
  mean, std = _CIFAR_STATS[name]
  return _dataset(images, np.concatenate(labels), layout.num_classes, mean, std, name)


# ---------------------------------------------------------------------------------------
# tfds

# stats computed from a train split, so that loading 'test' after 'train' is cheap
_TFDS_STATS: dict[tuple[str, str, int], tuple[tuple[float, ...], tuple[float, ...]]] = {}


def _import_tfds():
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise DataError(f"source 'tfds' needs tensorflow-datasets ({e}); run "
                    "pip install 'kdjax[tfds]' or use --config.data.source=archive") from None
  return tfds


def _has_tensorflow() -> bool:
  return importlib.util.find_spec('tensorflow') is not None


def _tfds_arrays(name: str, split: str, path: str) -> tuple[list[np.ndarray], np.ndarray, int]:
  tfds = _import_tfds()
  data_dir = os.path.expanduser(path) if path else None
  builder = tfds.builder(name, data_dir=data_dir)
  where = data_dir or str(builder.data_dir)
  if not builder.is_prepared():
    try:
      # array_record can be read back without tensorflow (tfds.data_source)
      builder.download_and_prepare(file_format=None if _has_tensorflow() else 'array_record')
    except Exception as e:
      raise DataError(
          f'dataset {name} is not in {where} and cannot be downloaded: {type(e).__name__}: '
          f'{str(e).splitlines()[0] if str(e) else ""}; pass --config.data.source=archive '
          '--config.data.path=... (CIFAR) or a --config.data.path with the prepared dataset') from None
  info = builder.info
  image_key, label_key = info.supervised_keys or ('image', 'label')
  splits = set(info.splits)
  if split == 'test' and 'test' not in splits and 'validation' in splits:
    split = 'validation'  # e.g. imagenette has no test split
  if splits and split not in splits:
    raise DataError(f'dataset {name} has no {split!r} split (it has {sorted(info.splits)})')
  num_classes = info.features[label_key].num_classes
  fmt = str(getattr(getattr(info, 'file_format', None), 'value', '') or 'tfrecord')
  if fmt == 'array_record' or not _has_tensorflow():
    try:
      source = builder.as_data_source(split=split)
    except Exception as e:  # tfds refuses random access to tfrecord files
      raise DataError(f'dataset {name} in {where} is stored as {fmt}, which needs tensorflow '
                      f"to read ({type(e).__name__}); run pip install 'kdjax[tfds]'") from None
    rows = (source[i] for i in range(len(source)))
  else:
    rows = tfds.as_numpy(builder.as_dataset(split=split))
  images, labels = [], []
  for row in rows:
    images.append(row[image_key])
    labels.append(row[label_key])
  labels = np.asarray(labels)
  return images, labels, num_classes


def _load_tfds(name: str, split: str, path: str, image_size: int) -> ArrayDataset:
  raw, labels, num_classes = _tfds_arrays(name, split, path)
  if not raw:
    raise DataError(f'dataset {name} has an empty {split!r} split')
  # one image at a time: some datasets have images of varying sizes
  images = _to_rgb(np.stack([
      _resize(np.asarray(img).reshape(img.shape[0], img.shape[1], -1)[None], image_size)[0]
      for img in raw]))
  if name in _CIFAR_STATS:
    mean, std = _CIFAR_STATS[name]
  else:
    key = (name, path, image_size)
    if key not in _TFDS_STATS:
      train = images if split == 'train' else _load_tfds(name, 'train', path, image_size).images
      _TFDS_STATS[key] = _channel_stats(train)
    mean, std = _TFDS_STATS[key]
  return _dataset(images, labels, num_classes, mean, std, name)
