"""What the ImageNet configs (``configs/imagenet/``) share: the two pairs of the ImageNet
KD tables, the protocol and the argument syntax.

Protocol (CRD paper section 4.2, as torchvision's ImageNet recipe): SGD momentum 0.9,
lr 0.1 for a global batch of 256, scaled linearly with the batch (the config's ``optim.lr``
follows ``train.batch_size`` when it is overridden), weight decay 1e-4, 100 epochs,
x0.1 at 30, 60 and 90; random-resized crop 224 + flip for training, resize 256 + centre
crop 224 for evaluation, streamed from tfds ``imagenet2012``.

Lives in the package because ml_collections loads config files by path (as
``kdjax.cifar_tables``).
"""
from __future__ import annotations

import ml_collections

from kdjax.config import base_config

# teacher-student pairs: kdjax model names
PAIRS = {'resnet34-resnet18': ('imagenet_resnet34', 'imagenet_resnet18'),
         'resnet50-mobilenetv1': ('imagenet_resnet50', 'imagenet_mobilenetv1')}
FLAGS = ('bf16',)  # '+bf16': bfloat16 compute (parameters and BatchNorm statistics stay float32)

# top-1 % of the pairs' teachers and students trained from labels, as the tables quote them
# (torchvision's pretrained ResNet-34 / ResNet-50; students from the same sources as PUBLISHED)
TEACHER_ACCURACY = {'resnet34-resnet18': 73.31, 'resnet50-mobilenetv1': 76.16}
STUDENT_ACCURACY = {'resnet34-resnet18': 69.75, 'resnet50-mobilenetv1': 68.87}
SOURCES = {'resnet34-resnet18': 'CRD paper (Tian et al., ICLR 2020), Table 4 (top-1 = 100 - error)',
           'resnet50-mobilenetv1': 'ReviewKD paper (Chen et al., CVPR 2021), ImageNet table'}


def parse(arg: str, extra_flags: tuple[str, ...] = ()) -> tuple[str, str, set[str]]:
  """``'PAIR[+FLAG...]'`` -> (teacher model, student model, flags) or a one-line error."""
  pair, *given = arg.split('+')
  flags = FLAGS + extra_flags
  unknown = [f for f in given if f not in flags]
  if pair not in PAIRS or unknown:
    raise ValueError(f'unknown config argument {arg!r}; accepted pairs: {", ".join(PAIRS)}; '
                     f"optional suffixes: {', '.join('+' + f for f in flags)}")
  teacher, student = PAIRS[pair]
  return teacher, student, set(given)


def imagenet_config(model: str, mode: str = 'train', flags: set[str] = frozenset()
                    ) -> ml_collections.ConfigDict:
  """The ImageNet protocol for ``model`` (mode 'train'; distill_config adds a teacher)."""
  c = base_config()
  c.mode = mode
  c.model.name = model
  c.model.dtype = 'bfloat16' if 'bf16' in flags else 'float32'
  d = c.data
  d.name, d.source, d.path = 'imagenet2012', 'tfds', ''  # data.path: the tfds data dir
  d.pipeline = 'streaming'
  d.image_size = 224
  d.train_crop = 'random_resized'
  d.eval_crop_fraction = 0.875
  d.crop_padding = 0
  d.flip = True
  c.train.batch_size = 256
  c.train.eval_batch_size = 256
  c.train.epochs = 100
  c.train.steps_per_call = 1  # one batch per call: a chunk of streamed batches is host memory
  c.optim.lr = c.train.get_ref('batch_size').to_float() * (0.1 / 256)  # follows overrides
  c.optim.momentum = 0.9
  c.optim.weight_decay = 1e-4
  c.optim.schedule = 'multistep'
  c.optim.milestones = (30, 60, 90)
  c.optim.decay_rate = 0.1
  c.checkpoint.keep = 2
  return c


def distill_config(arg: str, method: str, extra_flags: tuple[str, ...] = ()
                   ) -> tuple[ml_collections.ConfigDict, set[str]]:
  """The protocol for one pair; ``--config.teacher.checkpoint`` is left to the user (an
  export, e.g. torchvision's weights through ``python -m kdjax.convert``)."""
  teacher, student, flags = parse(arg, extra_flags)
  c = imagenet_config(student, 'distill', flags)
  c.teacher.model = teacher
  c.method.name = method
  c.method.temperature = 4.0
  return c, flags
