"""Transferability (CID, ICD): a linear head on a trained model's frozen backbone.

The backbone (``--config.transfer.checkpoint``: an export or a kdjax workdir, e.g. a
distilled CIFAR-100 student) keeps its weights and sees the target images at 32x32;
only a new linear classifier on its pooled feature is trained, and its last-epoch test
accuracy is the transfer number.

The protocol is giakoumoglou/distillers' ``cifar/transfer_student.py`` (methods.md §8):
the backbone's BatchNorm runs in train mode and re-estimates its statistics on the
target data; inputs are normalised with the target's statistics; head normal(0, 0.01);
SGD momentum 0.9, weight decay 5e-4, batch 64, lr 0.05 (0.01 for MobileNetV2 /
ShuffleV1 / ShuffleV2 backbones), 120 epochs, x0.1 at 30, 60, 90. The earlier kdjax
protocol is ``--config.transfer.backbone_bn=frozen --config.transfer.normalization=backbone
--config.optim.lr=0.1 --config.optim.weight_decay=0 --config.train.epochs=60
--config.optim.milestones=30,40,50 --config.transfer.low_lr=0``.

  python -m kdjax.main --config configs/transfer.py:stl10 --workdir runs/transfer_stl10 \\
      --config.transfer.checkpoint=runs/cid

Arguments select the target: ``stl10`` (tfds ``stl10``, 96x96 resized to 32x32; the
default), ``cifar10`` (tfds, or the official archive with ``--config.data.path``),
``digits`` (built in, no download) and ``tiny_imagenet`` (no tfds builder exists: prepare
it as a tfds dataset of that name and pass its ``--config.data.path``; the name selects
its published normalisation). Any other tfds image dataset works with
``--config.data.name=NAME``.

``PUBLISHED``: the transfer top-1 % of the distillers README at 2f95cea (teacher
wrn_40_2, student wrn_16_2, CIFAR-100 -> target), methods.md §8.
"""
from kdjax.config import base_config

# target -> (data.name, crop padding, flip)
TARGETS = {
    'stl10': ('stl10', 4, True),
    'cifar10': ('cifar10', 4, True),
    'digits': ('digits', 2, False),  # a mirrored digit is another symbol
    # no tfds builder: a tfds dataset you prepared under this name, --config.data.path=DIR
    'tiny_imagenet': ('tiny_imagenet', 4, True),
}
ARGS = tuple(TARGETS)

SOURCE = 'giakoumoglou/distillers README at 2f95cea (wrn_40_2 teacher, wrn_16_2 student)'
# {target: {row: top-1 %}}; rows: the backbone's origin (teacher, student from scratch,
# or distilled with the method)
PUBLISHED = {
    'stl10': {'teacher': 68.6, 'student': 69.7, 'kd': 70.9, 'at': 70.7, 'fitnet': 70.3,
              'crd': 71.6, 'crd+kd': 72.2, 'icd': 71.2, 'icd+kd': 72.5},
    'tiny_imagenet': {'teacher': 31.5, 'student': 33.7, 'kd': 33.9, 'at': 34.2,
                      'fitnet': 33.5, 'crd': 35.6, 'crd+kd': 35.5, 'icd': 35.0,
                      'icd+kd': 36.2},
}


def get_config(arg: str = 'stl10'):
  if arg not in TARGETS:
    raise ValueError(f'unknown config argument {arg!r}; accepted: {", ".join(TARGETS)}')
  c = base_config()
  c.mode = 'transfer'
  c.data.name, c.data.crop_padding, c.data.flip = TARGETS[arg]
  c.data.image_size = 32
  c.transfer.backbone_bn = 'adapt'
  c.transfer.normalization = 'target'
  c.optim.lr = 0.05
  c.transfer.low_lr = 0.01
  c.optim.momentum = 0.9
  c.optim.weight_decay = 5e-4
  c.optim.schedule = 'multistep'
  c.optim.milestones = (30, 60, 90)
  c.optim.decay_rate = 0.1
  c.train.epochs = 120
  c.train.batch_size = 64
  return c
