"""CID on ImageNet: a=1, T=4, 20 init epochs, cu=0 as on CIFAR-100 (methods.md §3), with
Nesterov momentum. The spec records no ImageNet sample / class weights, so b = c = 1
(the method's defaults); the reported number is the interventional head's.

  python -m kdjax.main --config configs/imagenet/cid.py:resnet34-resnet18[+bf16] \\
      --config.teacher.checkpoint=teachers/imagenet_resnet34 --config.data.path=TFDS_DIR \\
      --workdir runs/imagenet_cid_resnet18

``PUBLISHED``: the spec records no CID ImageNet numbers, so every entry is None.
"""
from kdjax import imagenet_tables as P

PUBLISHED = {pair: None for pair in P.PAIRS}
ARGS = tuple(P.PAIRS) + tuple(p + '+bf16' for p in P.PAIRS)


def get_config(arg: str = 'resnet34-resnet18'):
  c, _ = P.distill_config(arg, 'cid')
  c.optim.nesterov = True
  cid = c.method.cid
  cid.a, cid.b, cid.c = 1.0, 1.0, 1.0
  cid.init_epochs = 20
  cid.cu = 0.0
  return c
