"""FitNet on the CIFAR-100 tables (methods.md §1-2): ``gamma=1, alpha=0, beta=100``,
hint on ``feats[2]``, regressor trained jointly from epoch 0.

  python -m kdjax.main --config configs/fitnet.py:resnet32x4-resnet8x4 \\
      --config.teacher.checkpoint=runs/resnet32x4 --workdir runs/fitnet_resnet8x4

``PUBLISHED``: top-1 % from RepDistiller's README (CRD paper tables 1-2).
"""
from kdjax import cifar_tables as P

PUBLISHED = P.table((73.58, 72.24, 69.21, 68.99, 71.06, 73.50, 71.02,
                     64.14, 63.16, 70.69, 73.59, 73.54, 73.73))
SOURCE = P.REPDISTILLER_README
ARGS = P.PAIRS


def get_config(arg: str = 'resnet32x4-resnet8x4'):
  teacher, student, _ = P.parse(arg, P.PAIRS)
  c = P.distill_config(teacher, student, 'fitnet')
  c.method.gamma = 1.0
  c.method.alpha = 0.0
  c.method.beta = 100.0
  c.method.fitnet.hint_layer = 2
  return c
