"""What a run may do to its workdir: one run at a time, and a resume only with a config
that continues the same run.

Used by every run mode that owns a workdir (``loop.train``, and any other loop): wrap it
in ``locked``, store ``config_record(config)`` in the checkpoint meta, and on resume
call ``check_resume`` with the stored record, and add what ``record_changes`` returns to
the next metrics record.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import os
import socket
import time
from typing import Any, Callable, Iterator

import ml_collections

from kdjax.errors import ConfigError

LOCK_FILE = '.kdjax.lock'

# Keys that may differ when a run is resumed: they change how long it runs, how it is
# observed or where things are, not what the steps computed so far mean. Every other key
# must be as it was (a changed optim.lr or data.train_examples would silently mix two
# experiments). A prefix ending in '.' admits the whole group.
RESUMABLE_KEYS = (
    'train.epochs',            # extending or ending earlier (never below what is done)
    'train.progress', 'train.eval_every', 'train.eval_batch_size', 'train.steps_per_call',
    'train.max_skipped_steps',
    'checkpoint.',
    'data.path', 'data.feed',  # the same data, moved or fed another way
    'evaluate.', 'distributed.',  # coordinator addresses and process ids change per start
    'pipeline.',               # pipeline stages see their own keys (train.epochs) change
)


def check_writable(workdir: str) -> None:
  """ConfigError unless ``workdir`` is (or can be made) a directory kdjax can write in."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ConfigError(f'--workdir {workdir} is a file, not a directory; give a directory')
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f'.kdjax-write-test-{os.getpid()}')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
      raise  # reported as a full disk by main
    raise ConfigError(f'cannot write in --workdir {workdir} ({e.strerror or e}); give a '
                      'directory on a writable file system') from None


def _holder(path: str) -> str:
  try:
    with open(path) as f:
      info = json.load(f)
    return f"pid {info['pid']} on {info['host']}, since {info['since']}"
  except (OSError, ValueError, KeyError, TypeError):
    return 'another process'


@contextlib.contextmanager
def hold(workdir: str) -> Iterator[None]:
  """Holds ``workdir``'s lock for the block; ConfigError at once if another run holds it.

  The lock is an ``flock`` on ``workdir/.kdjax.lock``: the kernel releases it whenever
  the holder exits, however it dies (even SIGKILL), so a lock file left by a dead
  process never blocks a new run; the file only tells who holds a live lock.
  """
  check_writable(workdir)
  path = os.path.join(workdir, LOCK_FILE)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise ConfigError(f'--workdir {workdir} is in use by another kdjax run ({_holder(path)}); '
                        'wait for it to finish or use another --workdir') from None
    except OSError:  # a file system without flock (some NFS): run without the lock
      pass
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({'pid': os.getpid(), 'host': socket.gethostname(),
                             'since': time.strftime('%Y-%m-%d %H:%M:%S')}).encode())
    yield
  finally:
    os.close(fd)  # releases the flock


def locked(run: Callable[..., Any]) -> Callable[..., Any]:
  """Decorates ``run(config, workdir, ...)`` to hold the workdir's lock while it runs.

  With several processes only process 0 locks: they all share the workdir of one run.
  """
  @functools.wraps(run)
  def wrapper(config: ml_collections.ConfigDict, workdir: str, *args, **kwargs):
    from kdjax.train.mesh import is_main_process
    if not is_main_process():
      return run(config, workdir, *args, **kwargs)
    with hold(workdir):
      return run(config, workdir, *args, **kwargs)
  return wrapper


def _flat(tree: dict[str, Any], prefix: str = '') -> dict[str, Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flat(v, f'{prefix}{k}.'))
    else:
      out[prefix + k] = v
  return out


def config_record(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as stored in checkpoint meta: flat keys, JSON values."""
  return _flat(json.loads(json.dumps(config.to_dict(), default=str)))


def _resumable(key: str) -> bool:
  return any(key == k or (k.endswith('.') and key.startswith(k)) for k in RESUMABLE_KEYS)


def check_resume(saved: dict[str, Any] | None, config: ml_collections.ConfigDict,
                 done_epochs: int = 0) -> dict[str, tuple[Any, Any]]:
  """The accepted changes ``{key: (old, new)}`` between the config a checkpoint was
  written with (``saved``, from ``config_record``; None for checkpoints that predate it)
  and the resuming run's, whose checkpoint has ``done_epochs`` epochs behind it;
  ConfigError naming the first key that may not change."""
  if saved is None:
    return {}
  now = config_record(config)
  # a key only one side has was added to (or dropped from) kdjax in between: not a change
  changed = {k: (saved[k], now[k]) for k in sorted(set(saved) & set(now)) if saved[k] != now[k]}
  for key, (old, new) in changed.items():
    if not _resumable(key):
      raise ConfigError(
          f"config key '{key}' is {new!r} but the run in this workdir was started with "
          f'{old!r}; a resumed run must keep it (train.epochs may grow, logging, '
          'checkpointing and paths may change): set it back, or use a new --workdir')
  if 'train.epochs' in changed and changed['train.epochs'][1] < done_epochs:
    old, new = changed['train.epochs']
    raise ConfigError(f"config key 'train.epochs' is {new} but the run in this workdir (started "
                      f'with {old}) has already trained {done_epochs}; it can be extended or '
                      'stopped earlier, not undone: use a new --workdir')
  return changed


def record_changes(changes: dict[str, tuple[Any, Any]], log: Callable[[str], None]
                   ) -> dict[str, str]:
  """Prints the accepted changes; returns the metrics field that records them, to add to
  the next epoch's record in ``metrics.jsonl`` (so that every record stays an epoch's)."""
  if not changes:
    return {}
  text = ', '.join(f'{k}: {old!r} -> {new!r}' for k, (old, new) in changes.items())
  log(f'kdjax: resuming with changed {text}')
  return {'resume_changes': json.dumps(
      {k: {'old': old, 'new': new} for k, (old, new) in changes.items()})}
