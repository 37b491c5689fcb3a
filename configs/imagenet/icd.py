"""ICD and ICD+KD on ImageNet (methods.md §4 weights): ICD ``gamma=1, alpha=0, beta=1``;
``+kd`` gives ICD+KD ``alpha=1``; T=4, alpha_inv=0.5, max_scale=10. ICD's in-batch
negatives are the global batch (256 by default).

  python -m kdjax.main --config configs/imagenet/icd.py:resnet34-resnet18[+kd][+bf16] \\
      --config.teacher.checkpoint=teachers/imagenet_resnet34 --config.data.path=TFDS_DIR \\
      --workdir runs/imagenet_icd_resnet18

``PUBLISHED``: the spec records no ICD ImageNet numbers, so every entry is None.
"""
from kdjax import imagenet_tables as P

PUBLISHED = {arg: None for pair in P.PAIRS for arg in (pair, pair + '+kd')}
ARGS = tuple(PUBLISHED) + tuple(a + '+bf16' for a in PUBLISHED)


def get_config(arg: str = 'resnet34-resnet18'):
  c, flags = P.distill_config(arg, 'icd', ('kd',))
  c.method.gamma = 1.0
  c.method.alpha = 1.0 if 'kd' in flags else 0.0
  c.method.beta = 1.0
  c.method.icd.alpha_inv = 0.5
  c.method.icd.max_scale = 10.0
  return c
