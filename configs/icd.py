"""ICD and ICD+KD on the CIFAR-100 tables (methods.md §1, §4): ICD ``gamma=1, alpha=0,
beta=1``; the ``+kd`` suffix gives ICD+KD ``alpha=1``; T=4, alpha_inv=0.5, max_scale=10.

  python -m kdjax.main --config configs/icd.py:resnet32x4-resnet8x4[+kd] \\
      --config.teacher.checkpoint=runs/resnet32x4 --workdir runs/icd_resnet8x4

``PUBLISHED``: ICD and ICD+KD top-1 % from the giakoumoglou/distillers README at
2f95cea, the last version under the name ICD (methods.md §4).

The ICD code drops the last partial batch (``data.drop_last=True`` here); the other
table configs keep it, as RepDistiller and CID do (the default).
"""
from kdjax import cifar_tables as P

PUBLISHED = {**P.table((74.99, 73.69, 71.18, 71.00, 73.12, 74.23, 73.22,
                        68.35, 67.39, 73.85, 74.26, 75.26, 74.98)),
             **{pair + '+kd': acc for pair, acc in P.table((
                 76.06, 74.76, 71.81, 72.03, 73.62, 75.09, 73.95,
                 69.55, 69.91, 74.08, 75.27, 76.58, 76.51)).items()}}
SOURCE = P.DISTILLERS_README
ARGS = tuple(PUBLISHED)


def get_config(arg: str = 'resnet32x4-resnet8x4'):
  teacher, student, flags = P.parse(arg, P.PAIRS, ('kd',))
  c = P.distill_config(teacher, student, 'icd')
  c.method.gamma = 1.0
  c.method.alpha = 1.0 if 'kd' in flags else 0.0
  c.method.beta = 1.0
  c.method.temperature = 4.0
  c.method.icd.alpha_inv = 0.5
  c.method.icd.max_scale = 10.0
  c.data.drop_last = True  # the ICD code's loader drops the last partial batch
  return c
