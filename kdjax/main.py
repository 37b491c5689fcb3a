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

Exit codes: 0 done; 2 a mistake to fix (config, data, files, a workdir in use, a full
disk), reported in one ``kdjax: error:`` line; 3 a non-finite loss; 130 Ctrl-C (SIGINT)
and 143 SIGTERM, both after saving the state; 1 an error kdjax did not foresee: one
line naming the file that holds its full traceback.
"""
from __future__ import annotations

import os
import re
import signal
import sys
import tempfile
import time
import traceback

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file, e.g. configs/default.py or configs/default.py:smoke.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None,
                               'Directory for checkpoints, metrics and the exported model.')
_PLATFORM_EXIT_CODES = {'user': 2, 'preempted': 143, 'interrupted': 130, 'nonfinite': 3,
                        'unexpected': 1}


def _fail(message: str, code: int) -> None:
  print(f'kdjax: error: {message}', file=sys.stderr, flush=True)
  sys.exit(code)


def _config_value() -> object:
  """The loaded config, or a one-line error if the --config file did not give one."""
  import ml_collections
  config = _CONFIG.value
  if config is None and not flags.FLAGS['config'].present:
    _fail('--config is required, e.g. --config configs/default.py', 2)
  if not isinstance(config, ml_collections.ConfigDict):
    getattr(config, 'mode', None)  # config_flags' stand-in for an unloadable file raises here
    got = 'None (is a return statement missing?)' if config is None else (
        f'a {type(config).__name__}')
    _fail(f'the --config file\'s get_config() returned {got}; it must return an '
          'ml_collections.ConfigDict, e.g. built from kdjax.config.base_config()', 2)
  return config


def _traceback_file(workdir: str | None) -> str:
  """Writes the current exception's traceback where the user will find it."""
  name = f'kdjax-traceback-{time.strftime("%Y%m%d-%H%M%S")}-{os.getpid()}.txt'
  for folder in (workdir, tempfile.gettempdir()):
    if not folder or not os.path.isdir(folder):
      continue
    path = os.path.join(folder, name)
    try:
      with open(path, 'w') as f:
        f.write(f'kdjax {" ".join(sys.argv)}\n\n{traceback.format_exc()}')
      return path
    except OSError:
      continue
  return 'nowhere (no writable folder; run with --verbosity=1 to see it)'


def _unexpected(error: BaseException, workdir: str | None) -> None:
  """The last resort: one line for an error kdjax did not foresee, the traceback in a file."""
  from kdjax.train import export
  if export.disk_full(error):
    _fail('no space left on the device (or over quota) while writing; the last complete '
          'checkpoint and exports are kept: free some space and run the same command again '
          'to resume', _PLATFORM_EXIT_CODES['user'])
  reason = ' '.join(str(error).split())[:300] or 'no message'
  where = _traceback_file(workdir)
  _fail(f'unexpected {type(error).__name__}: {reason} (full traceback in {where}); this is '
        'a kdjax bug or an unforeseen situation: please report it with that file',
        _PLATFORM_EXIT_CODES['unexpected'])


def main(argv: list[str]) -> None:
  workdir = os.path.abspath(_WORKDIR.value) if _WORKDIR.value else None
  try:
    _main(argv, workdir)
  except SystemExit:
    raise
  except KeyboardInterrupt:  # Ctrl-C outside the train loop (which saves and says so)
    _fail('interrupted (SIGINT) before any state was saved in this run',
          _PLATFORM_EXIT_CODES['interrupted'])
  except Exception as e:  # noqa: BLE001 - the last-resort handler
    _unexpected(e, workdir)


def _main(argv: list[str], workdir: str | None) -> None:
  if len(argv) > 1:
    _fail(f'unexpected arguments {argv[1:]}; pass options as --config.<key>=<value>', 2)
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
  # imported here so that --help answers without initialising JAX
  from kdjax.config import validate, validate_distributed
  from kdjax.errors import USER_ERRORS, NonFiniteLoss, Preempted
  from kdjax.train.modes import run
  from kdjax.train.mesh import initialize_distributed
  from kdjax.train.workdir import check_writable

  try:
    config = _config_value()  # config_flags loads the file lazily and raises here if it could not
  except OSError as e:
    reason = [line.strip() for line in str(e).splitlines() if line.strip()][-1]
    _fail(f'cannot load the --config file: {reason}', 2)
  if config.get('mode') != 'evaluate' and not workdir:
    _fail('--workdir is required, e.g. --workdir /tmp/kdjax_run', 2)
  try:
    validate_distributed(config)
    # before any JAX backend use, and before validate: the device count is then global
    initialize_distributed(config)
    validate(config)
    if workdir and config.mode != 'evaluate':
      check_writable(workdir)  # after validate: a refused config leaves no workdir behind
    run(config, workdir or '')
  except USER_ERRORS as e:
    _fail(str(e), _PLATFORM_EXIT_CODES['user'])
  except Preempted as e:
    _fail(str(e), _PLATFORM_EXIT_CODES[
        'interrupted' if e.signum == signal.SIGINT else 'preempted'])
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
    if isinstance(e, AttributeError) and "has no attribute 'get_config'" in str(e):
      _fail(f'the --config file {os.path.relpath(path)} defines no get_config(); it must '
            'define get_config() returning an ml_collections.ConfigDict', 2)
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
