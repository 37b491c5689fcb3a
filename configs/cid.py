"""CID on the CIFAR-100 rows of methods.md §3: a=1, T=4, 20 init epochs, cu=0, §1
protocol with Nesterov momentum; per-pair b (sample) and c (class) weights below.

  python -m kdjax.main --config configs/cid.py:wrn_40_2-wrn_16_2 \\
      --config.teacher.checkpoint=runs/wrn_40_2 --workdir runs/cid_wrn_16_2

Ablation suffixes (combinable): ``+no_sample`` (drop L_sample), ``+no_class`` (drop
L_class), ``+no_intervention`` (phase-2 CE on the plain head, no z_do), e.g.
``configs/cid.py:resnet56-resnet20+no_class``.

The reported number is the interventional head's (``test/accuracy/interventional``).
``PUBLISHED``: the spec records no CID numbers, so every entry is None.
"""
import itertools

from kdjax import cifar_tables as P

# pair: (b, c), methods.md §3
WEIGHTS = {'wrn_40_2-wrn_16_2': (65.0, 1.0), 'resnet56-resnet20': (10.0, 1.0),
           'wrn_40_4-wrn_16_2': (55.0, 0.1), 'ResNet50-MobileNetV2': (33.0, 0.1),
           'ResNet50-vgg8': (8.0, 2.0)}
ABLATIONS = ('no_sample', 'no_class', 'no_intervention')
PUBLISHED = {pair: None for pair in WEIGHTS}
SOURCE = 'none recorded in methods.md section 3'
ARGS = tuple(pair + ''.join('+' + f for f in flags) for pair in WEIGHTS
             for n in range(len(ABLATIONS) + 1) for flags in itertools.combinations(ABLATIONS, n))


def get_config(arg: str = 'wrn_40_2-wrn_16_2'):
  teacher, student, flags = P.parse(arg, tuple(WEIGHTS), ABLATIONS)
  c = P.distill_config(teacher, student, 'cid')
  c.optim.nesterov = True
  c.method.temperature = 4.0   # KL, context weights and intervention probabilities
  cid = c.method.cid
  cid.a = 1.0
  cid.b, cid.c = WEIGHTS[f'{teacher}-{student}']
  cid.init_epochs = 20
  cid.cu = 0.0
  cid.use_sample_loss = 'no_sample' not in flags
  cid.use_class_loss = 'no_class' not in flags
  cid.use_intervention = 'no_intervention' not in flags
  return c
