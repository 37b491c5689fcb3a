"""Orbax checkpoints of the full train state, with resume, config fingerprinting and a
fallback past damaged checkpoints."""
from __future__ import annotations

import hashlib
import os
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

from kdjax.errors import CheckpointError


def tree_digest(tree: Any) -> str:
  """A digest of a pytree's values (structure, dtypes, shapes and bytes), from this
  process's copy of each (replicated) leaf, so it needs no cross-host transfer."""
  h = hashlib.blake2b(digest_size=16)
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  h.update(str(treedef).encode())
  for leaf in leaves:
    if isinstance(leaf, jax.Array):
      if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        leaf = jax.random.key_data(leaf)
      leaf = leaf.addressable_data(0)
    a = np.ascontiguousarray(np.asarray(leaf))
    h.update(f'{a.dtype.str}{a.shape}'.encode())
    h.update(a.tobytes())
  return h.hexdigest()


def _reason(error: BaseException) -> str:
  # TensorStore appends a long repr of its spec after 'See full TensorStore details'
  text = ' '.join(str(error).split(' See full ')[0].split())
  return f'{type(error).__name__}: {text[:200]}' if text else type(error).__name__


class Checkpoints:
  """``workdir/checkpoints``: the last ``keep`` train states, written atomically by orbax
  (into a temporary directory renamed when complete; leftovers of a killed write are
  removed at start).

  Each checkpoint carries a JSON ``meta`` item with the config fingerprint, so that a
  workdir of another experiment is refused instead of silently resumed, and a digest
  of the state, so that damage orbax reads without complaint is caught at restore.
  """

  def __init__(self, workdir: str, keep: int, warn: Callable[[str], None]):
    self.warn = warn  # how a skipped, damaged checkpoint is reported (the loop's console)
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             cleanup_tmp_directories=True),
        item_names=('state', 'meta'))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, meta: dict[str, Any], wait: bool = False) -> None:
    meta = {**meta, 'digest': tree_digest(state)}
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
    if wait:
      self.manager.wait_until_finished()

  def restore(self, target: Any, fingerprint: dict[str, Any],
              check: Callable[[dict[str, Any], int], Any] | None = None
              ) -> tuple[Any, dict[str, Any]]:
    """Restores the newest readable state onto ``target``'s structure, shapes and shardings.

    ``check(meta, step)`` runs on a checkpoint's meta before its state is read (e.g.
    whether the resuming config may continue it); what it raises propagates.

    A checkpoint that cannot be read, or whose values do not match the digest recorded
    at save, is reported in one line and deleted, and the one before it is tried (it
    would otherwise block re-saving its step). Raises CheckpointError if the checkpoints
    are another experiment's or none is readable.
    """
    steps = sorted(self.manager.all_steps(), reverse=True)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    bad = []
    for step in steps:
      try:
        meta = self.manager.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore()))['meta']
      except Exception as e:  # noqa: BLE001 - any failure to read means a damaged step
        bad.append(step)
        self._warn(step, _reason(e))
        continue
      self._check_fingerprint(meta, fingerprint)
      if check is not None:
        check(meta, step)
      try:
        state = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract)))['state']
      except Exception as e:  # noqa: BLE001
        bad.append(step)
        self._warn(step, _reason(e))
        continue
      if 'digest' in meta and tree_digest(state) != meta['digest']:
        bad.append(step)
        self._warn(step, 'its values do not match the digest recorded when it was saved')
        continue
      for b in bad:
        self.manager.delete(b)
      if bad:
        self.warn(f'resuming from step {step} instead; unreadable checkpoint step(s) {bad} '
                  'deleted')
      return state, meta
    raise CheckpointError(
        f'no checkpoint in {self.directory} is readable (steps {steps}); delete that '
        'directory to start the run over, or use a new --workdir')

  def _warn(self, step: int, reason: str) -> None:
    self.warn(f'checkpoint step {step} in {self.directory} is unreadable ({reason})')

  def _check_fingerprint(self, meta: dict[str, Any], fingerprint: dict[str, Any]) -> None:
    theirs = meta.get('fingerprint', {})
    diff = sorted(k for k in set(fingerprint) | set(theirs) if fingerprint.get(k) != theirs.get(k))
    if diff:
      k = diff[0]
      raise CheckpointError(
          f'{self.directory} holds checkpoints of another experiment ({k}: '
          f'{theirs.get(k)!r} there, {fingerprint.get(k)!r} now); use a new --workdir, or '
          'delete that directory to start over')

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
