"""Attention transfer on the CIFAR-100 tables (methods.md §1-2): ``gamma=1, alpha=0,
beta=1000``, p=2, over feats[1:-1].

  python -m kdjax.main --config configs/at.py:resnet32x4-resnet8x4 \\
      --config.teacher.checkpoint=runs/resnet32x4 --workdir runs/at_resnet8x4

``PUBLISHED``: top-1 % from RepDistiller's README (CRD paper tables 1-2).
"""
from kdjax import cifar_tables as P

PUBLISHED = P.table((74.08, 72.77, 70.55, 70.22, 72.31, 73.44, 71.43,
                     59.40, 58.58, 71.84, 71.73, 72.73, 73.32))
SOURCE = P.REPDISTILLER_README
ARGS = P.PAIRS


def get_config(arg: str = 'resnet32x4-resnet8x4'):
  teacher, student, _ = P.parse(arg, P.PAIRS)
  c = P.distill_config(teacher, student, 'at')
  c.method.gamma = 1.0
  c.method.alpha = 0.0
  c.method.beta = 1000.0
  c.method.at.p = 2.0
  return c
