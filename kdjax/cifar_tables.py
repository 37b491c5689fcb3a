"""What the CIFAR-100 table configs share (methods.md §1): the teacher/student pairs
of RepDistiller's tables, the per-student learning rate and the argument syntax.

Lives in the package (not in configs/) because ml_collections loads config files by
path, so they can import the installed package but not each other.
"""
from __future__ import annotations

import ml_collections

from kdjax.config import base_config

# Teachers (240 epochs, CE) and students from scratch, top-1 %, methods.md §1.
TEACHER_ACCURACY = {'resnet56': 72.34, 'resnet110': 74.31, 'resnet32x4': 79.42,
                    'wrn_40_2': 75.61, 'vgg13': 74.64, 'ResNet50': 79.34}
STUDENT_ACCURACY = {'wrn_16_2': 73.26, 'wrn_40_1': 71.98, 'resnet20': 69.06, 'resnet32': 71.14,
                    'resnet8x4': 72.50, 'vgg8': 70.36, 'MobileNetV2': 64.60, 'ShuffleV1': 70.50,
                    'ShuffleV2': 71.82}

# Column order of RepDistiller's README / CRD paper tables 1 (same family) and 2 (cross).
SAME_FAMILY = ('wrn_40_2-wrn_16_2', 'wrn_40_2-wrn_40_1', 'resnet56-resnet20', 'resnet110-resnet20',
               'resnet110-resnet32', 'resnet32x4-resnet8x4', 'vgg13-vgg8')
CROSS_FAMILY = ('vgg13-MobileNetV2', 'ResNet50-MobileNetV2', 'ResNet50-vgg8',
                'resnet32x4-ShuffleV1', 'resnet32x4-ShuffleV2', 'wrn_40_2-ShuffleV1')
PAIRS = SAME_FAMILY + CROSS_FAMILY

# Where the published numbers of the configs' PUBLISHED dicts come from (methods.md §1, §4)
REPDISTILLER_README = 'RepDistiller README (CRD paper, Tian et al. ICLR 2020, tables 1-2)'
CRD_PAPER = 'CRD paper (Tian et al. ICLR 2020), tables 1-2, CRD+KD rows'
DISTILLERS_README = 'giakoumoglou/distillers README at 2f95cea (ICD)'
SPEC_SECTION_1 = 'RepDistiller README / methods.md section 1'

# §1: lr 0.01 instead of 0.05 for these students.
LOW_LR_MODELS = ('MobileNetV2', 'ShuffleV1', 'ShuffleV2')


def table(row: tuple[float, ...]) -> dict[str, float]:
  """A table row (in PAIRS order) as {pair: accuracy}."""
  assert len(row) == len(PAIRS)
  return dict(zip(PAIRS, row))


def parse(arg: str, pairs: tuple[str, ...], flags: tuple[str, ...] = ()
          ) -> tuple[str, str, set[str]]:
  """``'TEACHER-STUDENT[+FLAG...]'`` -> (teacher, student, flags), or a one-line error
  listing what is accepted."""
  pair, *given = arg.split('+')
  unknown = [f for f in given if f not in flags]
  if pair not in pairs or unknown:
    extra = f"; optional suffixes: {', '.join('+' + f for f in flags)}" if flags else ''
    raise ValueError(f'unknown config argument {arg!r}; accepted pairs: {", ".join(pairs)}{extra}')
  teacher, student = pair.split('-')
  return teacher, student, set(given)


def learning_rate(model: str) -> float:
  return 0.01 if model in LOW_LR_MODELS else 0.05


def distill_config(teacher: str, student: str, method: str) -> ml_collections.ConfigDict:
  """§1 protocol (the base config's defaults) for one pair. The teacher checkpoint is
  left empty: pass ``--config.teacher.checkpoint=PATH`` (an export or a workdir of
  ``configs/teacher.py:TEACHER``); ``teacher.model`` makes the run check it is that model."""
  c = base_config()
  c.mode = 'distill'
  c.data.name = 'cifar100'
  c.model.name = student
  c.teacher.model = teacher
  c.teacher.checkpoint = ''
  c.method.name = method
  c.optim.lr = learning_rate(student)
  return c
