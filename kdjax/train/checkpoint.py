"""Orbax checkpoints of the full train state, with resume and config fingerprinting."""
from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointError(ValueError):
  """A workdir whose checkpoints cannot be used by this run."""


class Checkpoints:
  """``workdir/checkpoints``: the last ``keep`` train states, written atomically by orbax.

  Each checkpoint carries a JSON ``meta`` item with the config fingerprint so that a
  workdir of another experiment is refused instead of silently resumed.
  """

  def __init__(self, workdir: str, keep: int):
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        item_names=('state', 'meta'))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, meta: dict[str, Any], wait: bool = False) -> None:
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
    if wait:
      self.manager.wait_until_finished()

  def restore(self, target: Any, fingerprint: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Restores the latest state onto ``target``'s structure, shapes and shardings."""
    step = self.manager.latest_step()
    meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
    theirs = meta.get('fingerprint', {})
    diff = sorted(k for k in set(fingerprint) | set(theirs) if fingerprint.get(k) != theirs.get(k))
    if diff:
      k = diff[0]
      raise CheckpointError(
          f'{self.directory} holds checkpoints of another experiment ({k}: '
          f'{theirs.get(k)!r} there, {fingerprint.get(k)!r} now); use a new --workdir, or '
          'delete that directory to start over')
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))
    return restored['state'], meta

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
