"""DeepInversion (methods.md §5) on the data-free CIFAR tables.

  python -m kdjax.main --config configs/datafree/deepinv.py:cifar100-resnet34-resnet18 \
      --config.teacher.checkpoint=teachers/resnet34 --workdir runs/deepinv_r18

Pixels optimised for 1000 Adam steps per round of 256 images (bn 10, oh 1, adv 1);
``+kdci`` adds KDCI's de-confounded head (methods.md §6), ``+smoke`` shrinks everything.
``PUBLISHED``: top-1 % reference baselines (``SOURCE``).
"""
from kdjax import datafree_tables as P

PUBLISHED = P.table((93.26, 90.36, 83.04, 86.85, 89.72), (61.32, 54.13, 53.77, 61.33, 61.34))
SOURCE = P.SOURCE
ARGS = P.ARGS


def get_config(arg: str = 'cifar100-resnet34-resnet18'):
  return P.datafree_config(arg, 'deepinv')
