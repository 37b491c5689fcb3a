"""KD (Hinton) on the CIFAR-100 tables (methods.md §1-2): ``gamma=0.1, alpha=0.9``, T=4.

  python -m kdjax.main --config configs/kd.py:resnet32x4-resnet8x4 \\
      --config.teacher.checkpoint=runs/resnet32x4 --workdir runs/kd_resnet8x4

``PUBLISHED``: top-1 % from RepDistiller's README (CRD paper tables 1-2).
"""
from kdjax import cifar_tables as P

PUBLISHED = P.table((74.92, 73.54, 70.66, 70.67, 73.08, 73.33, 72.98,
                     67.37, 67.35, 73.81, 74.07, 74.45, 74.83))
SOURCE = P.REPDISTILLER_README
ARGS = P.PAIRS


def get_config(arg: str = 'resnet32x4-resnet8x4'):
  teacher, student, _ = P.parse(arg, P.PAIRS)
  c = P.distill_config(teacher, student, 'kd')
  c.method.gamma = 0.1
  c.method.alpha = 0.9
  c.method.beta = 0.0
  c.method.temperature = 4.0
  return c
