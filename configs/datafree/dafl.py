"""DAFL (methods.md §5) on the data-free CIFAR tables.

  python -m kdjax.main --config configs/datafree/dafl.py:cifar100-resnet34-resnet18 \
      --config.teacher.checkpoint=teachers/resnet34 --workdir runs/dafl_r18

A generator (nz 512) trained alongside the student: one generator step (oh 1, balance
20, act 0.001) per 5 student steps on fresh generator samples, student loss KL at T = 1
without augmentation (``datafree_kd.py`` replaces the criterion for DAFL).
``PUBLISHED``: top-1 % reference baselines (``SOURCE``).
"""
from kdjax import datafree_tables as P

PUBLISHED = P.table((92.22, 81.10, 65.71, 81.33, 81.55), (74.47, 54.16, 20.88, 42.83, 43.70))
SOURCE = P.SOURCE
ARGS = P.ARGS


def get_config(arg: str = 'cifar100-resnet34-resnet18'):
  c = P.datafree_config(arg, 'dafl')
  c.datafree.nz = 512
  c.datafree.kd_steps = 5 if '+smoke' not in arg else 2   # 5 student steps per generator step

  c.method.temperature = 1.0
  c.data.crop_padding = 0
  c.data.flip = False
  return c
