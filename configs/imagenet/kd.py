"""KD (Hinton) on ImageNet: ``gamma=0.1, alpha=0.9``, T=4, for ResNet-34 -> ResNet-18 and
ResNet-50 -> MobileNetV1 (``kdjax.imagenet_tables`` holds the protocol).

  python -m kdjax.main --config configs/imagenet/kd.py:resnet34-resnet18 \\
      --config.teacher.checkpoint=teachers/imagenet_resnet34 --config.data.path=TFDS_DIR \\
      --workdir runs/imagenet_kd_resnet18      # append +bf16 to the argument on accelerators

``PUBLISHED``: top-1 % (resnet34-resnet18: CRD paper Table 4, KD 29.34 top-1 error;
resnet50-mobilenetv1: ReviewKD paper's ImageNet table).
"""
from kdjax import imagenet_tables as P

PUBLISHED = {'resnet34-resnet18': 70.66, 'resnet50-mobilenetv1': 68.58}
ARGS = tuple(P.PAIRS) + tuple(p + '+bf16' for p in P.PAIRS)


def get_config(arg: str = 'resnet34-resnet18'):
  c, _ = P.distill_config(arg, 'kd')
  c.method.gamma = 0.1
  c.method.alpha = 0.9
  c.method.beta = 0.0
  return c
