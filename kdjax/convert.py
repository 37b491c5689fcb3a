"""Convert a PyTorch checkpoint into a kdjax export that configs can name as a teacher.

  python -m kdjax.convert --torch_checkpoint cifar100_resnet56.pth --model resnet56 \\
      --num_classes 100 --dataset cifar100 --out teachers/resnet56
  python -m kdjax.convert --torch_checkpoint resnet34-b627a593.pth --model imagenet_resnet34 \\
      --num_classes 1000 --dataset imagenet2012 --image_size 224 --out teachers/resnet34

The export (``kdjax_model.json`` + orbax ``variables/``) is what
``--config.teacher.checkpoint`` and ``--config.evaluate.checkpoint`` accept. Reading
``.pth`` files needs PyTorch (``pip install 'kdjax[torch]'``).

The file is read with ``torch.load(weights_only=True)``: tensors and containers only, so
a crafted checkpoint cannot run code; ``--allow_pickle`` unpickles fully (runs whatever
the file holds: only for files you trust). ``--out`` is never a folder kdjax did not
write; replacing an export there needs ``--overwrite``.

The input normalisation recorded in the export is the one the network was trained with:
``--normalization=kd`` (default) the KD protocol's constants for ``--dataset``
(RepDistiller's teachers), ``chenyaofo`` those of chenyaofo/pytorch-cifar-models (the
shared CIFAR-100 teachers), or ``--mean`` / ``--std`` given explicitly.
"""
from __future__ import annotations

import math
import os
import sys

from absl import app, flags, logging

_CKPT = flags.DEFINE_string('torch_checkpoint', None, 'PyTorch .pth/.pt file (state dict, '
                            "optionally nested under 'model' or 'state_dict').")
_MODEL = flags.DEFINE_string('model', None, 'kdjax model name (the reference name).')
_CLASSES = flags.DEFINE_integer('num_classes', 100, 'Number of classes of the checkpoint.')
_OUT = flags.DEFINE_string('out', None, 'Directory to write the export to (new, empty, or '
                           'an export to replace with --overwrite).')
_DATASET = flags.DEFINE_string('dataset', 'cifar100', 'Dataset whose normalisation the '
                               'network was trained with (recorded in the export).')
_NORMALIZATION = flags.DEFINE_enum(
    'normalization', 'kd', ['kd', 'chenyaofo'], "Whose constants for --dataset: 'kd' (the KD "
    "protocol's, RepDistiller) or 'chenyaofo' (pytorch-cifar-models, the shared teachers).")
_MEAN = flags.DEFINE_list('mean', None, 'Per-channel mean overriding the dataset\'s.')
_STD = flags.DEFINE_list('std', None, 'Per-channel std overriding the dataset\'s.')
_SIZE = flags.DEFINE_integer('image_size', 32, 'Input size the network was trained on '
                             '(recorded in the export; 224 for ImageNet models).')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace the kdjax export already at --out.')
_ALLOW_PICKLE = flags.DEFINE_bool(
    'allow_pickle', False, 'Unpickle the checkpoint fully (torch.load weights_only=False). '
    'This runs any code the file holds: only for files from a source you trust.')


def _fail(message: str) -> None:
  print(f'kdjax: error: {message}', file=sys.stderr, flush=True)
  sys.exit(2)


def _channels(flag: flags.FlagHolder, positive: bool) -> tuple[float, ...]:
  """Three finite numbers (> 0 for a std), or a one-line error naming the flag."""
  try:
    values = tuple(float(v) for v in flag.value)
  except ValueError:
    _fail(f'--{flag.name} must be 3 comma-separated numbers, got {",".join(flag.value)!r}')
  if len(values) != 3 or not all(math.isfinite(v) for v in values) or (
      positive and min(values) <= 0):
    what = 'positive numbers' if positive else 'finite numbers'
    _fail(f'--{flag.name} must be 3 {what} (one per RGB channel), got {",".join(flag.value)}')
  return values


def _normalization() -> tuple[tuple[float, ...], tuple[float, ...]]:
  from kdjax.data.sources import known_normalization
  stats = known_normalization(_DATASET.value, _NORMALIZATION.value)
  if stats is None and not (_MEAN.value and _STD.value):
    _fail(f'no known {_NORMALIZATION.value!r} normalisation for dataset {_DATASET.value!r}; '
          'pass --mean and --std')
  mean = _channels(_MEAN, False) if _MEAN.value else stats[0]
  std = _channels(_STD, True) if _STD.value else stats[1]
  return mean, std


def _check_out(path: str) -> None:
  """--out must be new, an empty folder, or (with --overwrite) an export."""
  from kdjax.train import export
  if not os.path.exists(path):
    return
  if not os.path.isdir(path):
    _fail(f'--out {path} is a file; give a new directory')
  if os.listdir(path) and not os.path.isfile(os.path.join(path, export.META_FILE)):
    _fail(f'--out {path} is a folder that is not a kdjax export; refusing to write into it '
          '(nothing was changed): give a new directory')
  if os.listdir(path) and not _OVERWRITE.value:
    _fail(f'--out {path} already holds a kdjax export; pass --overwrite to replace it')


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    _fail(f'unexpected arguments {argv[1:]}; see --help')
  logging.set_verbosity(logging.WARNING)
  from kdjax.models import model_names
  from kdjax.models.torch_import import CheckpointMismatchError, load_torch_checkpoint
  from kdjax.train import export

  for flag in (_CKPT, _MODEL, _OUT):
    if not flag.value:
      _fail(f'--{flag.name} is required; see --help')
  if _MODEL.value not in model_names():
    _fail(f"unknown model {_MODEL.value!r}; accepted: {', '.join(model_names())}")
  if _CLASSES.value < 1:
    _fail(f'--num_classes must be >= 1, got {_CLASSES.value}')
  if not os.path.isfile(_CKPT.value):
    _fail(f'--torch_checkpoint {_CKPT.value} does not exist')
  mean, std = _normalization()
  out = os.path.abspath(_OUT.value)
  _check_out(out)
  try:
    _, variables = load_torch_checkpoint(_MODEL.value, _CKPT.value, _CLASSES.value,
                                         allow_pickle=_ALLOW_PICKLE.value)
  except (CheckpointMismatchError, ImportError, ValueError) as e:
    _fail(f'{_CKPT.value}: {e}')
  try:
    export.save(out, {'params': variables['params'],
                      'batch_stats': variables.get('batch_stats', {}), 'method': {}},
                {'model': _MODEL.value, 'num_classes': _CLASSES.value, 'method': 'ce',
                 'dataset': _DATASET.value, 'normalization': 'given' if _MEAN.value else (
                     _NORMALIZATION.value), 'mean': list(mean), 'std': list(std),
                 'image_size': _SIZE.value, 'converted_from': os.path.abspath(_CKPT.value)})
  except export.ExportError as e:
    _fail(str(e))
  except OSError as e:
    _fail(f'cannot write the export to {out} ({e.strerror or e}); nothing was replaced')
  print(f'kdjax: wrote {_MODEL.value} ({_CLASSES.value} classes) from {_CKPT.value} to '
        f'{out}', flush=True)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, with a bad flag value as one line instead of absl's FATAL block."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _fail(f'{e}; see --help')
  return []


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
