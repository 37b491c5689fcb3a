"""kdjax command line: ``python -m kdjax.main --config configs/<file>.py[:arg] --workdir DIR``.

The config file's ``config.mode`` says what to do:
  train     train ``model.name`` on ``data`` from labels (teachers, baselines)
  distill   distil ``model.name`` from the frozen ``teacher.checkpoint`` with ``method``
  evaluate  evaluate ``evaluate.checkpoint`` on ``data`` / ``evaluate.split``
  pipeline  teacher, then distilled student, then the student from labels, in one go
  transfer  train a linear head on ``data`` over the frozen backbone of ``transfer.checkpoint``
Override any key with ``--config.<key>=<value>`` (e.g. ``--config.train.epochs=5``).
A workdir that holds checkpoints of the same experiment is resumed. Several processes
train one model when each runs the same command with ``--config.distributed.enabled``
and its own ``--config.distributed.process_id`` (see README, Multi-host).
"""
from __future__ import annotations

import os
import re
import sys
import traceback

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
  from kdjax.config import ConfigError, validate, validate_distributed
  from kdjax.data import DataError
  from kdjax.train import export
  from kdjax.train.checkpoint import CheckpointError
  from kdjax.train.loop import NonFiniteLoss, Preempted, run
  from kdjax.train.mesh import initialize_distributed

  config = _CONFIG.value
  if config is None:
    _fail('--config is required, e.g. --config configs/default.py', 2)
  try:
    config.mode  # config_flags loads the file lazily and raises here if it could not
  except OSError as e:
    reason = [line.strip() for line in str(e).splitlines() if line.strip()][-1]
    _fail(f'cannot load the --config file: {reason}', 2)
  if config.mode != 'evaluate' and not _WORKDIR.value:
    _fail('--workdir is required, e.g. --workdir /tmp/kdjax_run', 2)
  try:
    validate_distributed(config)
    # before any JAX backend use, and before validate: the device count is then global
    initialize_distributed(config)
    validate(config)
    run(config, os.path.abspath(_WORKDIR.value) if _WORKDIR.value else '')
  except (ConfigError, DataError, CheckpointError, export.ExportError) as e:
    _fail(str(e), _PLATFORM_EXIT_CODES['user'])
  except Preempted as e:
    _fail(str(e), _PLATFORM_EXIT_CODES['preempted'])
  except NonFiniteLoss as e:
    _fail(str(e), _PLATFORM_EXIT_CODES['nonfinite'])


def _config_path(argv: list[str]) -> str | None:
  """The --config file named on the command line (without its ':arg')."""
  for i, a in enumerate(argv):
    if a.startswith('--config='):
      return os.path.abspath(a.split('=', 1)[1].split(':', 1)[0])
    if a == '--config' and i + 1 < len(argv):
      return os.path.abspath(argv[i + 1].split(':', 1)[0])
  return None


def _raised_in(error: BaseException, path: str | None) -> tuple[BaseException, int] | None:
  """(the original error, its line) if ``error`` or one it was raised from came from the
  config file ``path`` itself (config_flags re-wraps some errors with a traceback text)."""
  seen = error
  while path and seen is not None:
    if isinstance(seen, SyntaxError) and seen.filename and os.path.abspath(seen.filename) == path:
      return seen, seen.lineno or 0
    lines = [f.lineno for f in traceback.extract_tb(seen.__traceback__)
             if os.path.abspath(f.filename) == path]
    if lines:
      return seen, lines[-1] or 0
    seen = seen.__cause__ or seen.__context__
  return None


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, with override mistakes turned into one line instead of a traceback."""
  try:
    return flags.FLAGS(argv)
  except SystemExit:  # absl exits 1 after printing --help; asking for help is no failure
    if any(a in ('--help', '-h', '--helpfull', '--helpshort') for a in argv):
      sys.exit(0)
    raise
  except Exception as e:  # noqa: BLE001 - a config file can raise anything
    path = _config_path(argv)
    origin = _raised_in(e, path)
    if origin is None:
      _report_override_error(e)
      raise
    error, line = origin
    reason = ' '.join(str(error).split()) or 'no message'
    _fail(f'the --config file {os.path.relpath(path)} raised {type(error).__name__} at '
          f'line {line}: {reason}', 2)
  return []


def _report_override_error(e: Exception) -> None:
  """One line for the mistakes absl / ml_collections make in parsing the overrides."""
  if isinstance(e, (KeyError, AttributeError)):  # ml_collections: unknown key in --config.<key>
    text = str(e)
    key = re.search(r"(\w+)", text)
    close = re.search(r'Did you mean "(\w+)"', text)
    hint = f'; did you mean {close.group(1)!r}?' if close else '; see the config file for the keys'
    _fail(f"unknown config key {key.group(1) if key else text!r} in a --config override{hint}", 2)
  if isinstance(e, (flags.Error, ValueError, TypeError)):
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    # a failing get_config() arrives as a whole traceback: its last line is the reason
    reason = lines[-1] if 'Traceback' in str(e) else ' '.join(lines)
    _fail(f'{reason}; see --help', 2)


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
