"""The built-in default: teacher, distilled student and baseline on scikit-learn's digits.

Real data that ships with scikit-learn (1797 8x8 digits, brought to 32x32x3), so it runs
anywhere without a download: a resnet20 teacher is trained from labels, a resnet8
student is distilled from it with KD, and the same student is trained from labels
alone for comparison. A few minutes on a laptop CPU.

  python -m kdjax.main --config configs/default.py --workdir /tmp/kdjax_digits
  python -m kdjax.main --config configs/default.py:smoke ...   # seconds, for tests
"""
from kdjax.config import base_config


def get_config(arg: str = ''):
  c = base_config()
  c.mode = 'pipeline'
  c.data.name = 'digits'
  c.data.crop_padding = 2      # digits fill the frame: a smaller shift keeps them legible
  c.data.flip = False          # a mirrored digit is another symbol
  c.model.name = 'resnet8'
  c.pipeline.teacher_model = 'resnet20'
  c.pipeline.teacher_epochs = 10
  c.method.name = 'kd'
  c.method.gamma = 0.1
  c.method.alpha = 0.9
  c.method.temperature = 4.0
  c.optim.lr = 0.05
  c.optim.schedule = 'cosine'
  c.train.epochs = 10
  c.train.batch_size = 64
  c.train.eval_batch_size = 128
  if arg == 'smoke':
    c.pipeline.teacher_epochs = 1
    c.train.epochs = 1
    c.pipeline.baseline = False
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; accepted: '' or 'smoke'")
  return c
