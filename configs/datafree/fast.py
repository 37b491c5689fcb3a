"""FastDFKD, Fast-10 (methods.md §5) on the data-free CIFAR tables.

  python -m kdjax.main --config configs/datafree/fast.py:cifar100-resnet34-resnet18 \
      --config.teacher.checkpoint=teachers/resnet34 --workdir runs/fast_r18

A meta generator (first-order MAML), 10 inner steps per round (lr_g 2e-3, lr_z 1e-2), BN
momentum 0.9, 20 warm-up epochs of synthesis only, then 200 epochs (220 in all) at lr
0.2; oh / adv per teacher as ``fast_cifar.sh``. ``PUBLISHED``: top-1 % (``SOURCE``).
"""
from kdjax import datafree_tables as P

PUBLISHED = P.table((94.05, 90.53, 89.29, 92.51, 92.45), (74.34, 67.44, 54.02, 63.91, 65.12))
SOURCE = P.SOURCE
ARGS = P.ARGS
# fast_cifar.sh: (oh, adv) by teacher; other teachers (the extra cells) take the WRN's
WEIGHTS = {'resnet34': (0.5, 1.33), 'vgg11': (0.5, 1.0), 'wrn_40_2': (0.4, 1.1)}
OTHER_WEIGHTS = WEIGHTS['wrn_40_2']


def get_config(arg: str = 'cifar100-resnet34-resnet18'):
  c = P.datafree_config(arg, 'fast')
  oh, adv = WEIGHTS.get(c.teacher.model, OTHER_WEIGHTS)
  c.datafree.fast.oh = oh
  c.datafree.fast.adv = adv
  c.optim.lr = 0.2
  if '+smoke' not in arg:
    c.train.epochs = 220
    c.datafree.warmup = 20
  return c
