"""CRD and CRD+KD on ImageNet: CRD ``gamma=1, alpha=0, beta=0.8``; ``+kd`` gives CRD+KD
``alpha=1``; 16384 negatives, NCE temperature 0.07, one memory row per training image.

  python -m kdjax.main --config configs/imagenet/crd.py:resnet34-resnet18[+kd][+bf16] \\
      --config.teacher.checkpoint=teachers/imagenet_resnet34 --config.data.path=TFDS_DIR \\
      --workdir runs/imagenet_crd_resnet18

``PUBLISHED``: top-1 % (resnet34-resnet18: CRD paper Table 4, CRD 28.83 and CRD+KD 28.62
top-1 error; resnet50-mobilenetv1: ReviewKD paper's ImageNet table, CRD; its CRD+KD is
not recorded, None).
"""
from kdjax import imagenet_tables as P

PUBLISHED = {'resnet34-resnet18': 71.17, 'resnet34-resnet18+kd': 71.38,
             'resnet50-mobilenetv1': 71.37, 'resnet50-mobilenetv1+kd': None}
ARGS = tuple(PUBLISHED) + tuple(a + '+bf16' for a in PUBLISHED)


def get_config(arg: str = 'resnet34-resnet18'):
  c, flags = P.distill_config(arg, 'crd', ('kd',))
  c.method.gamma = 1.0
  c.method.alpha = 1.0 if 'kd' in flags else 0.0
  c.method.beta = 0.8
  c.method.crd.negatives = 16384
  c.method.crd.sampling = 'uniform'
  return c
