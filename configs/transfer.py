"""Transferability (CID, ICD): a linear head on a trained model's frozen backbone.

The backbone (``--config.transfer.checkpoint``: an export or a kdjax workdir, e.g. a
distilled CIFAR-100 student) keeps its weights and BatchNorm statistics and sees the
target images at 32x32 with its own normalisation; only a new linear classifier on its
pooled feature is trained, and its test accuracy is the transfer number.

  python -m kdjax.main --config configs/transfer.py:stl10 --workdir runs/transfer_stl10 \\
      --config.transfer.checkpoint=runs/cid

Arguments select the target: ``stl10`` (tfds ``stl10``, 96x96 resized to 32x32; the
default), ``cifar10`` (tfds, or the official archive with ``--config.data.path``) and
``digits`` (built in, no download). Any other tfds image dataset works with
``--config.data.name=NAME`` (Tiny-ImageNet has no tfds builder: prepare it as a tfds
dataset and pass its ``data.path``).
"""
from kdjax.config import base_config

# target -> (data.name, crop padding, flip)
TARGETS = {
    'stl10': ('stl10', 4, True),
    'cifar10': ('cifar10', 4, True),
    'digits': ('digits', 2, False),  # a mirrored digit is another symbol
}
ARGS = tuple(TARGETS)


def get_config(arg: str = 'stl10'):
  if arg not in TARGETS:
    raise ValueError(f'unknown config argument {arg!r}; accepted: {", ".join(TARGETS)}')
  c = base_config()
  c.mode = 'transfer'
  c.data.name, c.data.crop_padding, c.data.flip = TARGETS[arg]
  c.data.image_size = 32
  # the linear-probe protocol: SGD 0.1, no weight decay, 60 epochs decayed at 30/40/50
  c.optim.lr = 0.1
  c.optim.momentum = 0.9
  c.optim.weight_decay = 0.0
  c.optim.schedule = 'multistep'
  c.optim.milestones = (30, 40, 50)
  c.optim.decay_rate = 0.1
  c.train.epochs = 60
  c.train.batch_size = 64
  return c
