"""What the data-free table configs share (methods.md §5, Fast-Datafree / CMI protocol):
the ten CIFAR-10/100 teacher-student pairs, the student recipe, the reference numbers and
the argument syntax ``DATASET-TEACHER-STUDENT[+kdci][+smoke]``.

Lives in the package because ml_collections loads config files by path (they can import
the package but not each other).
"""
from __future__ import annotations

import ml_collections

from kdjax.config import base_config

DATASETS = ('cifar10', 'cifar100')
PAIRS = ('resnet34-resnet18', 'vgg11-resnet18', 'wrn_40_2-wrn_16_1', 'wrn_40_2-wrn_40_1',
         'wrn_40_2-wrn_16_2')
TABLE_ARGS = tuple(f'{d}-{p}' for d in DATASETS for p in PAIRS)
# Cells outside the published tables, for the reduced-budget CPU runs: the built-in digits
# (a kdjax-trained resnet20 teacher) and the CIFAR-100 ResNets of ../shared/teachers.
EXTRA_ARGS = ('digits-resnet20-resnet8', 'cifar100-resnet56-resnet20')
ARGS = TABLE_ARGS + EXTRA_ARGS
FLAGS = ('kdci', 'smoke')

# Teachers trained on the real data, top-1 % (methods.md §5).
TEACHER_ACCURACY = {
    'cifar10': {'resnet34': 95.70, 'vgg11': 92.25, 'wrn_40_2': 94.87},
    'cifar100': {'resnet34': 78.05, 'vgg11': 71.32, 'wrn_40_2': 75.83},
}
SOURCE = ('Fast-Datafree README / FastDFKD paper (Fang et al., AAAI 2022) table 1, as '
          'methods.md §5 records them')


def table(cifar10: tuple[float, ...], cifar100: tuple[float, ...]) -> dict[str, float]:
  """Two rows in PAIRS order as {'DATASET-TEACHER-STUDENT': top-1 %}."""
  assert len(cifar10) == len(cifar100) == len(PAIRS)
  return {**{f'cifar10-{p}': v for p, v in zip(PAIRS, cifar10)},
          **{f'cifar100-{p}': v for p, v in zip(PAIRS, cifar100)}}


def parse(arg: str) -> tuple[str, str, str, set[str]]:
  """``'cifar100-resnet34-resnet18+kdci'`` -> (dataset, teacher, student, flags)."""
  name, *given = arg.split('+')
  unknown = [f for f in given if f not in FLAGS]
  if name not in ARGS or unknown:
    raise ValueError(f'unknown config argument {arg!r}; accepted: {", ".join(ARGS)}; optional '
                     f'suffixes: {", ".join("+" + f for f in FLAGS)}')
  dataset, teacher, student = name.split('-')
  return dataset, teacher, student, set(given)


def datafree_config(arg: str, method: str) -> ml_collections.ConfigDict:
  """The student recipe of Fast-Datafree's ``datafree_kd.py`` for one cell: SGD momentum
  0.9, weight decay 1e-4, lr 0.1, cosine to 2e-4, batch 256, KL at T = 20 on the pool's
  crop-and-flipped images, 200 epochs of 400 student steps. The teacher checkpoint is left
  empty: pass ``--config.teacher.checkpoint=PATH`` (an export, e.g. from kdjax.convert)."""
  dataset, teacher, student, flags = parse(arg)
  c = base_config()
  c.mode = 'datafree'
  c.data.name = dataset
  c.model.name = student
  c.teacher.model = teacher
  c.teacher.checkpoint = ''
  c.method.name = 'kd'
  c.method.gamma = 0.0
  c.method.alpha = 1.0
  c.method.beta = 0.0
  c.method.temperature = 20.0
  c.optim.lr = 0.1
  c.optim.momentum = 0.9
  c.optim.weight_decay = 1e-4
  c.optim.schedule = 'cosine'
  c.optim.min_lr = 2e-4
  c.train.epochs = 200
  c.train.batch_size = 256
  c.data.crop_padding = 4
  c.data.flip = True
  c.datafree.method = method
  c.datafree.synthesis_batch_size = 256
  c.datafree.kd_steps = 0      # = ep_steps: one synthesis round per epoch
  c.datafree.ep_steps = 400
  c.datafree.pool_capacity = 65536
  if dataset == 'digits':   # digits fill the frame and a mirrored digit is another symbol
    c.data.crop_padding = 2
    c.data.flip = False
  if 'kdci' in flags:
    c.method.kdci.enabled = True
  if 'smoke' in flags:
    smoke(c)
  return c


def smoke(c: ml_collections.ConfigDict) -> None:
  """Seconds instead of days: the same code paths at toy size (tests, first looks)."""
  d = c.datafree
  d.synthesis_batch_size = 16
  d.kd_steps = min(d.kd_steps, 2)
  d.ep_steps = 2
  d.pool_capacity = 64
  d.warmup = min(d.warmup, 1)
  d[d.method].g_steps = min(d[d.method].g_steps, 2)
  if 'n_neg' in d[d.method]:
    d[d.method].n_neg = 16
    d[d.method].bank_size = 64
  c.train.epochs = 2
  c.train.batch_size = 16
  c.train.eval_batch_size = 64
