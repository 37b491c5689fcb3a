"""CRD and CRD+KD on the CIFAR-100 tables (methods.md §1-2): CRD ``gamma=1, alpha=0,
beta=0.8``; the ``+kd`` suffix gives CRD+KD ``alpha=1`` (same method, other weights).
16384 negatives from the other classes without replacement (RepDistiller's
default exact mode), NCE temperature 0.07, memory momentum 0.5.

  python -m kdjax.main --config configs/crd.py:resnet56-resnet20 ...
  python -m kdjax.main --config configs/crd.py:resnet56-resnet20+kd ...
  (with --config.teacher.checkpoint=runs/resnet56 --workdir ...)

``PUBLISHED``: CRD top-1 % from RepDistiller's README (CRD paper tables 1-2); CRD+KD
from the CRD paper's tables 1-2 (methods.md §4); ``SOURCE`` says which per argument.
"""
from kdjax import cifar_tables as P

PUBLISHED = {**P.table((75.48, 74.14, 71.16, 71.46, 73.48, 75.51, 73.94,
                        69.73, 69.11, 74.30, 75.11, 75.65, 76.05)),
             **{pair + '+kd': acc for pair, acc in P.table((
                 75.64, 74.38, 71.63, 71.56, 73.75, 75.46, 74.29,
                 69.94, 69.54, 74.58, 75.12, 76.05, 76.27)).items()}}
SOURCE = {arg: P.CRD_PAPER if arg.endswith('+kd') else P.REPDISTILLER_README
          for arg in PUBLISHED}
ARGS = tuple(PUBLISHED)


def get_config(arg: str = 'resnet32x4-resnet8x4'):
  teacher, student, flags = P.parse(arg, P.PAIRS, ('kd',))
  c = P.distill_config(teacher, student, 'crd')
  c.method.gamma = 1.0
  c.method.alpha = 1.0 if 'kd' in flags else 0.0
  c.method.beta = 0.8
  c.method.temperature = 4.0
  c.method.crd.negatives = 16384
  c.method.crd.sampling = 'other_class'
  return c
