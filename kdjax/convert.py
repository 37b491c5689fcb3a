"""Convert a PyTorch checkpoint into a kdjax export that configs can name as a teacher.

  python -m kdjax.convert --torch_checkpoint cifar100_resnet56.pth --model resnet56 \\
      --num_classes 100 --dataset cifar100 --out teachers/resnet56
  python -m kdjax.convert --torch_checkpoint resnet34-b627a593.pth --model imagenet_resnet34 \\
      --num_classes 1000 --dataset imagenet2012 --image_size 224 --out teachers/resnet34

The export (``kdjax_model.json`` + orbax ``variables/``) is what
``--config.teacher.checkpoint`` and ``--config.evaluate.checkpoint`` accept. Reading
``.pth`` files needs PyTorch (``pip install 'kdjax[torch]'``).
"""
from __future__ import annotations

import os
import sys

from absl import app, flags, logging

_CKPT = flags.DEFINE_string('torch_checkpoint', None, 'PyTorch .pth/.pt file (state dict, '
                            "optionally nested under 'model' or 'state_dict').")
_MODEL = flags.DEFINE_string('model', None, 'kdjax model name (the reference name).')
_CLASSES = flags.DEFINE_integer('num_classes', 100, 'Number of classes of the checkpoint.')
_OUT = flags.DEFINE_string('out', None, 'Directory to write the export to.')
_DATASET = flags.DEFINE_string('dataset', 'cifar100', 'Dataset whose normalisation the '
                               'network was trained with (recorded in the export).')
_MEAN = flags.DEFINE_list('mean', None, 'Per-channel mean overriding the dataset\'s.')
_STD = flags.DEFINE_list('std', None, 'Per-channel std overriding the dataset\'s.')
_SIZE = flags.DEFINE_integer('image_size', 32, 'Input size the network was trained on '
                             '(recorded in the export; 224 for ImageNet models).')


def _fail(message: str) -> None:
  print(f'kdjax: error: {message}', file=sys.stderr, flush=True)
  sys.exit(2)


def main(argv: list[str]) -> None:
  del argv
  logging.set_verbosity(logging.WARNING)
  from kdjax.data.sources import known_normalization
  from kdjax.models import model_names
  from kdjax.models.torch_import import CheckpointMismatchError, load_torch_checkpoint
  from kdjax.train import export

  for flag in (_CKPT, _MODEL, _OUT):
    if not flag.value:
      _fail(f'--{flag.name} is required; see --help')
  if _MODEL.value not in model_names():
    _fail(f"unknown model {_MODEL.value!r}; accepted: {', '.join(model_names())}")
  if not os.path.isfile(_CKPT.value):
    _fail(f'--torch_checkpoint {_CKPT.value} does not exist')
  stats = known_normalization(_DATASET.value)
  if stats is None and not (_MEAN.value and _STD.value):
    _fail(f'no known normalisation for dataset {_DATASET.value!r}; pass --mean and --std')
  mean = tuple(float(m) for m in _MEAN.value) if _MEAN.value else stats[0]
  std = tuple(float(s) for s in _STD.value) if _STD.value else stats[1]
  try:
    _, variables = load_torch_checkpoint(_MODEL.value, _CKPT.value, _CLASSES.value)
  except (CheckpointMismatchError, ImportError, ValueError) as e:
    _fail(f'{_CKPT.value}: {e}')
  export.save(_OUT.value, {'params': variables['params'],
                           'batch_stats': variables.get('batch_stats', {}), 'method': {}},
              {'model': _MODEL.value, 'num_classes': _CLASSES.value, 'method': 'ce',
               'dataset': _DATASET.value, 'mean': list(mean), 'std': list(std),
               'image_size': _SIZE.value, 'converted_from': os.path.abspath(_CKPT.value)})
  print(f'kdjax: wrote {_MODEL.value} ({_CLASSES.value} classes) from {_CKPT.value} to '
        f'{os.path.abspath(_OUT.value)}', flush=True)


if __name__ == '__main__':
  app.run(main)
