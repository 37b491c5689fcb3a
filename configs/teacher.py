"""Trains a CIFAR-100 model from labels alone (methods.md §1): the teachers, and the
students' from-scratch baselines. ``PUBLISHED`` holds the §1 numbers (top-1 %).

  python -m kdjax.main --config configs/teacher.py:resnet32x4 --workdir runs/resnet32x4
"""

from kdjax import cifar_tables as P
from kdjax import models

PUBLISHED = {**P.TEACHER_ACCURACY, **P.STUDENT_ACCURACY, 'wrn_40_4': None}  # CID's extra teacher
SOURCE = P.SPEC_SECTION_1
ARGS = tuple(PUBLISHED)


def get_config(arg: str = 'resnet32x4'):
  if arg not in models.model_names():
    raise ValueError(f'unknown config argument {arg!r}; accepted: any model, '
                     f'{", ".join(models.model_names())}')
  c = P.distill_config('', arg, 'ce')
  c.mode = 'train'              # CE on labels; teacher.* and the method weights are unused
  c.teacher.model = ''
  return c
