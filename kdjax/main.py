"""kdjax command line: ``python -m kdjax.main --config configs/<file>.py[:arg] --workdir DIR``.

The config file's ``config.mode`` says what to do:
  train     train ``model.name`` on ``data`` from labels (teachers, baselines)
  distill   distil ``model.name`` from the frozen ``teacher.checkpoint`` with ``method``
  evaluate  evaluate ``evaluate.checkpoint`` on ``data`` / ``evaluate.split``
  pipeline  teacher, then distilled student, then the student from labels, in one go
Override any key with ``--config.<key>=<value>`` (e.g. ``--config.train.epochs=5``).
A workdir that holds checkpoints of the same experiment is resumed.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file, e.g. configs/default.py or configs/default.py:smoke.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None,
                               'Directory for checkpoints, metrics and the exported model.')
_PLATFORM_EXIT_CODES = {'user': 2, 'preempted': 143, 'nonfinite': 3}


def _fail(message: str, code: int) -> None:
  print(f'kdjax: error: {message}', file=sys.stderr, flush=True)
  sys.exit(code)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    _fail(f'unexpected arguments {argv[1:]}; pass options as --config.<key>=<value>', 2)
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
  # imported here so that --help answers without initialising JAX
  from kdjax.config import ConfigError, validate
  from kdjax.data import DataError
  from kdjax.train import export
  from kdjax.train.checkpoint import CheckpointError
  from kdjax.train.loop import NonFiniteLoss, Preempted, run

  config = _CONFIG.value
  if config is None:
    _fail('--config is required, e.g. --config configs/default.py', 2)
  if config.mode != 'evaluate' and not _WORKDIR.value:
    _fail('--workdir is required, e.g. --workdir /tmp/kdjax_run', 2)
  try:
    validate(config)
    run(config, os.path.abspath(_WORKDIR.value) if _WORKDIR.value else '')
  except (ConfigError, DataError, CheckpointError, export.ExportError) as e:
    _fail(str(e), _PLATFORM_EXIT_CODES['user'])
  except Preempted as e:
    _fail(str(e), _PLATFORM_EXIT_CODES['preempted'])
  except NonFiniteLoss as e:
    _fail(str(e), _PLATFORM_EXIT_CODES['nonfinite'])


if __name__ == '__main__':
  app.run(main)
