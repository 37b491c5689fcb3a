"""Train an ImageNet or Tiny-ImageNet model from labels (mode train).

  python -m kdjax.main --config configs/imagenet/teacher.py:imagenet_resnet34 \\
      --config.data.path=TFDS_DIR --workdir runs/imagenet_resnet34
  python -m kdjax.main --config configs/imagenet/teacher.py:tiny:imagenet_resnet18 \\
      --config.data.path=/data/tiny-imagenet-200 --workdir runs/tiny_resnet18

ImageNet: the protocol of ``kdjax.imagenet_tables`` (teachers are usually torchvision's
published weights, imported with ``python -m kdjax.convert``). ``tiny:MODEL``:
Tiny-ImageNet from its published folder (200 classes, 64x64), with the protocol of
Fast-Datafree's ``train_scratch.py`` that KDCI builds on: random crop with 4 pixels of
padding + flip on the 64x64 images, batch 256, SGD 0.1, weight decay 1e-4, x0.2 at epochs
120, 150 and 180, 200 epochs.
"""
from kdjax import imagenet_tables as P

MODELS = ('imagenet_resnet18', 'imagenet_resnet34', 'imagenet_resnet50', 'imagenet_mobilenetv1',
          'imagenet_mobilenetv2')
ARGS = MODELS + tuple(f'tiny:{m}' for m in MODELS) + tuple(f'{m}+bf16' for m in MODELS)
PUBLISHED = {}


def get_config(arg: str = 'imagenet_resnet18'):
  tiny = arg.startswith('tiny:')
  model, *flags = arg.split(':', 1)[-1].split('+') if tiny else arg.split('+')
  if model not in MODELS or set(flags) - set(P.FLAGS):
    raise ValueError(f'unknown config argument {arg!r}; accepted: MODEL, tiny:MODEL or '
                     f"MODEL+bf16 with MODEL one of {', '.join(MODELS)}")
  c = P.imagenet_config(model, 'train', set(flags))
  if tiny:
    d = c.data
    d.name, d.source, d.image_size = 'tiny_imagenet', 'tiny_imagenet', 64
    d.train_crop, d.crop_padding, d.eval_crop_fraction = 'resize', 4, 1.0
    c.train.epochs = 200
    c.optim.milestones = (120, 150, 180)
    c.optim.decay_rate = 0.2
  return c
