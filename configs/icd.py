"""ICD and ICD+KD on the CIFAR-100 tables (methods.md §1, §4): ICD ``gamma=1, alpha=0,
beta=1``; the ``+kd`` suffix gives ICD+KD ``alpha=1``; T=4, alpha_inv=0.5, max_scale=10.

  python -m kdjax.main --config configs/icd.py:resnet32x4-resnet8x4[+kd] \\
      --config.teacher.checkpoint=runs/resnet32x4 --workdir runs/icd_resnet8x4

``PUBLISHED``: the spec records no ICD numbers, so every entry is None.
"""
from kdjax import cifar_tables as P

PUBLISHED = {arg: None for pair in P.PAIRS for arg in (pair, pair + '+kd')}
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
  return c
