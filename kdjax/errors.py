"""Every error kdjax reports to its user, at the bottom of the import graph.

Any module may raise these without importing upwards (the config checks, the data
sources, the checkpoint and export readers, the train loop). ``kdjax.main`` maps them to
exit codes: ``USER_ERRORS`` are mistakes to fix (2), ``NonFiniteLoss`` is 3,
``Preempted`` 130 / 143 after the state was saved.
"""
from __future__ import annotations

import signal


class ConfigError(ValueError):
  """A configuration mistake, reported to the user in one line."""


class DataError(ValueError):
  """A data problem the user can fix; the message says what is wrong and how to fix it."""


class CheckpointError(ValueError):
  """A workdir whose checkpoints cannot be used by this run."""


class ExportError(ValueError):
  """A model export that is missing, unreadable, damaged or does not fit."""


class NonFiniteLoss(Exception):
  """A loss became NaN/inf; the last good checkpoint is kept."""


class Preempted(Exception):
  """SIGTERM or SIGINT arrived; the state was saved and the run can be resumed."""

  def __init__(self, message: str, signum: int = signal.SIGTERM):
    super().__init__(message)
    self.signum = signum


# mistakes the user fixes: one line, exit code 2
USER_ERRORS = (ConfigError, DataError, CheckpointError, ExportError)
