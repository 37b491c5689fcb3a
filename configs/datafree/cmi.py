"""CMI (methods.md §5) on the data-free CIFAR tables.

  python -m kdjax.main --config configs/datafree/cmi.py:cifar100-resnet34-resnet18 \
      --config.teacher.checkpoint=teachers/resnet34 --workdir runs/cmi_r18

A fresh generator per round, 200 Adam steps (bn 1, oh 1, adv 0.5, cr 0.8 at T 0.2, a
memory bank of 40960 features and 4096 negatives). ``PUBLISHED``: top-1 % reference
numbers (``SOURCE``).
"""
from kdjax import datafree_tables as P

PUBLISHED = P.table((94.84, 91.13, 90.01, 92.78, 92.52), (77.04, 70.56, 57.91, 68.88, 68.75))
SOURCE = P.SOURCE
ARGS = P.ARGS


def get_config(arg: str = 'cifar100-resnet34-resnet18'):
  return P.datafree_config(arg, 'cmi')
