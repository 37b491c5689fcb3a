"""Similarity-preserving KD on the CIFAR-100 pairs (methods.md §1 protocol): ``gamma=1,
alpha=0, beta=3000`` (RepDistiller's weight for SP) on feats[-2].

  python -m kdjax.main --config configs/sp.py:resnet32x4-resnet8x4 \\
      --config.teacher.checkpoint=runs/resnet32x4 --workdir runs/sp_resnet8x4

No ``PUBLISHED`` here: methods.md records no SP numbers (SP is a baseline kdjax offers,
not one of the compared tables).
"""
from kdjax import cifar_tables as P

ARGS = P.PAIRS


def get_config(arg: str = 'resnet32x4-resnet8x4'):
  teacher, student, _ = P.parse(arg, P.PAIRS)
  c = P.distill_config(teacher, student, 'sp')
  c.method.gamma = 1.0
  c.method.alpha = 0.0
  c.method.beta = 3000.0
  return c
