"""Datasets larger than memory: random-access sources and per-example host transforms.

``data.pipeline='streaming'`` reads examples one at a time instead of loading a split:

==============  ========================================================================
data.source     what ``data.path`` points at
==============  ========================================================================
folder          ``path/train/<class>/*`` and ``path/val/<class>/*`` (or ``test/`` or
                ``validation/``): any JPEG/PNG files, one sub-directory per class
                (torchvision ``ImageFolder``); classes are the sorted directory names.
tiny_imagenet   the published ``tiny-imagenet-200/`` folder: ``wnids.txt``,
                ``train/<wnid>/images/*.JPEG``, ``val/images/*.JPEG`` with
                ``val/val_annotations.txt``; classes are the sorted wnids.
tfds            a tfds data dir (``data.name`` e.g. ``imagenet2012``) holding the dataset
                prepared as ``array_record`` (random access, no TensorFlow needed);
                ImageNet is prepared once from its manual-download directory
                (``data.manual_dir``, the two official tars), see ``docs/``.
==============  ========================================================================

A split is a :class:`StreamingSplit`: a random-access source of (encoded image or
array, label) plus the transform; :meth:`StreamingSplit.example` turns example
``index`` of ``epoch`` into a uint8 (S, S, 3) image. It is a pure function of
``(seed, epoch, index)`` and the file, so the batches do not depend on the number of
processes, workers or restarts. What runs where, in parallel, and how the batches reach
the devices is ``kdjax.train.stream_feed``.

Transforms (torchvision's protocol): training ``random_resized`` = RandomResizedCrop
(scale ``(min_crop_scale, 1)``, ratio (3/4, 4/3)) or ``resize`` (the whole image to S);
evaluation resizes the shorter side to ``S / eval_crop_fraction`` (256 for 224) and takes
the centre S x S crop. Horizontal flips (and the optional padded crop) stay on the
device (``data.flip``, ``data.crop_padding``) as for in-memory data.
"""
from __future__ import annotations

import dataclasses
import io
import math
import os
from typing import Any, Protocol, Sequence

import numpy as np

from kdjax.data.sources import IMAGENET_STATS, DataError, known_normalization

STREAMING_SOURCES = ('folder', 'tiny_imagenet', 'tfds')
TRAIN_CROPS = ('random_resized', 'resize')
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')
_EVAL_FOLDERS = ('val', 'test', 'validation')
_RATIO = (3 / 4, 4 / 3)


class RandomAccess(Protocol):
  """What grain calls a random-access data source: ``len`` and ``[i] -> (image, label)``."""

  def __len__(self) -> int: ...

  def __getitem__(self, index: int) -> tuple[Any, int]: ...


# ---------------------------------------------------------------------------------------
# Sources


@dataclasses.dataclass(frozen=True)
class FileSource:
  """Image files with labels; ``[i]`` reads file ``i``'s bytes (decoded by the transform)."""
  files: tuple[str, ...]
  labels: np.ndarray  # int32 (N,)

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, index: int) -> tuple[bytes, int]:
    with open(self.files[index], 'rb') as f:
      return f.read(), int(self.labels[index])


def _images_in(folder: str) -> list[str]:
  return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                if f.lower().endswith(IMAGE_EXTENSIONS))


def _split_folder(root: str, split: str) -> str:
  names = ('train',) if split == 'train' else _EVAL_FOLDERS
  for name in names:
    if os.path.isdir(os.path.join(root, name)):
      return os.path.join(root, name)
  raise DataError(f"{root!r} has no {'/ or '.join(names)}/ folder for the {split} split; "
                  'expected PATH/train/<class>/*.jpg and PATH/val/<class>/*.jpg')


def folder_classes(root: str) -> list[str]:
  """Class names of an image folder: the sorted sub-directories of its train split."""
  train = _split_folder(root, 'train')
  classes = sorted(d for d in os.listdir(train) if os.path.isdir(os.path.join(train, d)))
  if len(classes) < 2:
    raise DataError(f'{train!r} must hold one sub-directory per class (at least 2), '
                    f'found {len(classes)}')
  return classes


def image_folder(root: str, split: str) -> FileSource:
  """``root/<split folder>/<class>/*.{jpg,jpeg,png}``, classes from the train folder."""
  classes = folder_classes(root)
  where = _split_folder(root, split)
  files, labels = [], []
  for label, name in enumerate(classes):
    folder = os.path.join(where, name)
    found = _images_in(folder) if os.path.isdir(folder) else []
    files += found
    labels += [label] * len(found)
  if not files:
    raise DataError(f'{where!r} holds no JPEG/PNG images under its class folders')
  return FileSource(tuple(files), np.asarray(labels, np.int32))


def tiny_imagenet_classes(root: str) -> tuple[str, list[str]]:
  """(the tiny-imagenet-200 folder, its sorted wnids) for that folder or its parent."""
  if os.path.isdir(os.path.join(root, 'tiny-imagenet-200')):
    root = os.path.join(root, 'tiny-imagenet-200')
  wnids_file = os.path.join(root, 'wnids.txt')
  if not os.path.isfile(wnids_file):
    raise DataError(f'{root!r} is not the tiny-imagenet-200/ folder (no wnids.txt); pass the '
                    'extracted tiny-imagenet-200.zip')
  with open(wnids_file) as f:
    return root, sorted(line.strip() for line in f if line.strip())


def tiny_imagenet(root: str, split: str) -> FileSource:
  """Tiny-ImageNet's published layout (200 classes, 500 train / 50 val images each)."""
  root, wnids = tiny_imagenet_classes(root)
  index = {w: i for i, w in enumerate(wnids)}
  files, labels = [], []
  if split == 'train':
    for w in wnids:
      found = _images_in(os.path.join(root, 'train', w, 'images'))
      files += found
      labels += [index[w]] * len(found)
  else:
    annotations = os.path.join(root, 'val', 'val_annotations.txt')
    if not os.path.isfile(annotations):
      raise DataError(f'{root!r} lacks val/val_annotations.txt; re-extract tiny-imagenet-200.zip')
    with open(annotations) as f:
      rows = sorted(line.split('\t')[:2] for line in f if line.strip())
    for name, w in rows:
      if w not in index:
        raise DataError(f'{annotations}: class {w!r} is not in wnids.txt; the folder is damaged')
      files.append(os.path.join(root, 'val', 'images', name))
      labels.append(index[w])
  if not files:
    raise DataError(f'{root!r} holds no {split} images')
  return FileSource(tuple(files), np.asarray(labels, np.int32))


class TfdsSource:
  """A tfds array_record data source; ``[i] -> (uint8 HWC image, label)``."""

  def __init__(self, source: Sequence[dict[str, Any]], image_key: str, label_key: str):
    self._source, self._image, self._label = source, image_key, label_key

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
    row = self._source[index]
    return np.asarray(row[self._image]), int(row[self._label])


def tfds_split(name: str, split: str, data_dir: str, manual_dir: str = ''
               ) -> tuple[TfdsSource, int]:
  """(source, num_classes); prepares the dataset (array_record) from ``manual_dir`` if needed."""
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise DataError(f"source 'tfds' needs tensorflow-datasets ({e}); pip install "
                    "tensorflow-datasets") from None
  builder = tfds.builder(name, data_dir=os.path.expanduser(data_dir) if data_dir else None)
  if not builder.is_prepared():
    # as for in-memory tfds data: prepared once (array_record, readable without
    # TensorFlow); manual datasets (imagenet2012) read their tars from manual_dir
    config = tfds.download.DownloadConfig(
        manual_dir=os.path.expanduser(manual_dir) if manual_dir else None)
    try:
      builder.download_and_prepare(file_format='array_record', download_config=config)
    except Exception as e:
      raise DataError(f'{name} is not prepared in {builder.data_dir} and preparing it failed '
                      f'({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}); '
                      'set --config.data.manual_dir to the folder with its downloaded files'
                      ) from None
  info = builder.info
  image_key, label_key = info.supervised_keys or ('image', 'label')
  if split != 'train':
    split = 'validation' if 'validation' in info.splits or not info.splits else 'test'
  try:
    source = builder.as_data_source(split=split)
  except Exception as e:  # tfrecord files cannot be read by random access
    raise DataError(f'{name} in {builder.data_dir} cannot be read by random access '
                    f'({type(e).__name__}); prepare it with file_format=array_record') from None
  return TfdsSource(source, image_key, label_key), info.features[label_key].num_classes


# ---------------------------------------------------------------------------------------
# Transforms


@dataclasses.dataclass(frozen=True)
class Transform:
  size: int                       # output S
  train: bool
  train_crop: str = 'random_resized'
  min_crop_scale: float = 0.08
  eval_crop_fraction: float = 0.875  # 224 / 256


def random_resized_box(rng: np.random.Generator, width: int, height: int,
                       min_scale: float) -> tuple[int, int, int, int]:
  """(left, top, w, h) as torchvision's ``RandomResizedCrop.get_params``: ten tries at an
  area fraction in [min_scale, 1] and a log-uniform aspect ratio in [3/4, 4/3], else the
  centre crop with the ratio clamped."""
  area = width * height
  log_lo, log_hi = math.log(_RATIO[0]), math.log(_RATIO[1])
  for _ in range(10):
    target = area * rng.uniform(min_scale, 1.0)
    aspect = math.exp(rng.uniform(log_lo, log_hi))
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return left, top, w, h
  ratio = width / height
  if ratio < _RATIO[0]:
    w, h = width, int(round(width / _RATIO[0]))
  elif ratio > _RATIO[1]:
    w, h = int(round(height * _RATIO[1])), height
  else:
    w, h = width, height
  return (width - w) // 2, (height - h) // 2, w, h


def _decode(data: Any):
  from PIL import Image
  if isinstance(data, np.ndarray):
    img = Image.fromarray(data[..., 0] if data.ndim == 3 and data.shape[-1] == 1 else data)
  else:
    img = Image.open(io.BytesIO(data))
  return img.convert('RGB')  # grayscale / CMYK / RGBA files exist in ImageNet


def apply_transform(data: Any, t: Transform, rng: np.random.Generator | None) -> np.ndarray:
  """Decoded, cropped and resized uint8 (S, S, 3) image."""
  from PIL import Image
  img = _decode(data)
  s = t.size
  if t.train:
    if t.train_crop == 'resize':
      img = img.resize((s, s), Image.BILINEAR)
    else:
      left, top, w, h = random_resized_box(rng, img.width, img.height, t.min_crop_scale)
      img = img.resize((s, s), Image.BILINEAR, box=(left, top, left + w, top + h))
  else:
    # torchvision Resize(S / fraction) of the shorter side, then CenterCrop(S)
    short = int(s / t.eval_crop_fraction)
    w, h = img.size
    nw, nh = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    if (nw, nh) != (w, h):
      img = img.resize((nw, nh), Image.BILINEAR)
    top, left = int(round((nh - s) / 2.0)), int(round((nw - s) / 2.0))
    img = img.crop((left, top, left + s, top + s))
  return np.asarray(img, np.uint8)


# ---------------------------------------------------------------------------------------
# Splits


@dataclasses.dataclass(frozen=True)
class StreamingSplit:
  """One split read example by example; duck-types the parts of ``ArrayDataset`` that
  the train loop uses (``len``, ``num_classes``, ``mean``/``std``, ``name``, ``labels``)."""
  source: RandomAccess
  transform: Transform
  num_classes: int
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  name: str
  seed: int = 0
  labels: np.ndarray | None = None  # host labels when the source lists them cheaply

  def __len__(self) -> int:
    return len(self.source)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return (self.transform.size, self.transform.size, 3)

  def example(self, index: int, epoch: int) -> tuple[np.ndarray, int]:
    """(image, label) of example ``index`` in ``epoch``: its crop depends only on
    (seed, epoch, index)."""
    data, label = self.source[int(index)]
    rng = np.random.default_rng([self.seed, epoch, int(index)]) if self.transform.train else None
    return apply_transform(data, self.transform, rng), label


def check_streaming(d: Any) -> None:
  """Config-time checks of ``config.data`` for the streaming pipeline (nothing read)."""
  if d.source not in STREAMING_SOURCES:
    raise DataError(f"data.pipeline 'streaming' reads data.source {', '.join(STREAMING_SOURCES)}; "
                    f'got {d.source!r}')
  if d.train_examples:
    raise DataError("config key 'data.train_examples' subsets in-memory data only; leave it 0 "
                    "with data.pipeline 'streaming' (or point data.path at a smaller folder)")
  if d.train_crop not in TRAIN_CROPS:
    raise DataError(f"config key 'data.train_crop' is {d.train_crop!r}; accepted: "
                    f"{', '.join(TRAIN_CROPS)}")
  if not 0 < d.min_crop_scale <= 1 or not 0 < d.eval_crop_fraction <= 1:
    raise DataError("config keys 'data.min_crop_scale' and 'data.eval_crop_fraction' must be "
                    f'in (0, 1], got {d.min_crop_scale} and {d.eval_crop_fraction}')
  if d.source in ('folder', 'tiny_imagenet'):
    if not d.path or not os.path.isdir(os.path.expanduser(d.path)):
      raise DataError(f"data.source {d.source!r} needs --config.data.path=FOLDER (got "
                      f'{d.path!r}, not a directory)')
    (folder_classes if d.source == 'folder' else tiny_imagenet_classes)(
        os.path.expanduser(d.path))
  try:
    import grain  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    raise DataError("data.pipeline 'streaming' needs grain: pip install 'kdjax[streaming]'"
                    ) from None


def load_streaming(d: Any, split: str, seed: int) -> StreamingSplit:
  """The ``split`` ('train' or 'test') of ``config.data`` as a :class:`StreamingSplit`."""
  path = os.path.expanduser(d.path)
  if d.source == 'tfds':
    source, num_classes = tfds_split(d.name, split, d.path, d.manual_dir)
    labels = None
  else:
    source = image_folder(path, split) if d.source == 'folder' else tiny_imagenet(path, split)
    labels = source.labels
    num_classes = len(tiny_imagenet_classes(path)[1] if d.source == 'tiny_imagenet'
                      else folder_classes(path))
  mean, std = known_normalization(d.name) or IMAGENET_STATS
  t = Transform(d.image_size, split == 'train', d.train_crop, d.min_crop_scale,
                d.eval_crop_fraction)
  return StreamingSplit(source, t, num_classes, tuple(mean), tuple(std), d.name, seed, labels)
