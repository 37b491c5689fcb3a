"""Exported models: a trained network's variables plus what is needed to use it.

An export is a directory holding ``kdjax_model.json`` (model name, class count, data
normalisation, method) and ``variables/`` (an orbax checkpoint of ``params``,
``batch_stats`` and the method's variables). Teachers for ``distill`` and models for
``evaluate`` are read from exports; a kdjax workdir holds its final export in
``model/``, and the torch converter writes the same format.
"""
from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import math
import os
import shutil
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from kdjax.errors import ExportError

META_FILE = 'kdjax_model.json'
VARIABLES_DIR = 'variables'
DIGEST_KEY = 'variables_digest'
# beside an export being replaced: the new one is completed there, then swapped in
STAGING_SUFFIX = '.kdjax-new'
OLD_SUFFIX = '.kdjax-old'
# what save() writes inside an export; a folder holding anything else is not replaced
_OWN_ENTRIES = {META_FILE, META_FILE + '.tmp', VARIABLES_DIR}


def resolve(path: str) -> str:
  """The export directory for ``path`` (an export itself, or a workdir holding one)."""
  path = os.path.abspath(path)
  for candidate in (path, os.path.join(path, 'model')):
    if os.path.isfile(os.path.join(candidate, META_FILE)):
      return candidate
    # a replacement interrupted between its two renames (see _swap) left the old one here
    if not os.path.exists(candidate) and os.path.isfile(
        os.path.join(candidate + OLD_SUFFIX, META_FILE)):
      return candidate + OLD_SUFFIX
  raise ExportError(f'{path} holds no kdjax model (no {META_FILE}); give an exported model '
                    'directory or the workdir of a finished kdjax run')


def _is_number(v: Any) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_count(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _is_channels(v: Any) -> bool:
  return isinstance(v, list) and len(v) == 3 and all(_is_number(x) for x in v)


# key -> (test, what is accepted); 'model' and 'num_classes' are required
_META_FIELDS = {
    'model': (lambda v: isinstance(v, str) and bool(v), 'a model name'),
    'num_classes': (_is_count, 'an integer >= 1'),
    'mean': (_is_channels, 'a list of 3 finite numbers'),
    'std': (lambda v: _is_channels(v) and min(v) > 0, 'a list of 3 numbers > 0'),
    'image_size': (_is_count, 'an integer >= 1'),
    'method': (lambda v: isinstance(v, str), 'a method name'),
    'dataset': (lambda v: v is None or isinstance(v, str), 'a dataset name'),
    'method_config': (lambda v: isinstance(v, dict), 'an object'),
    'test_accuracies': (lambda v: isinstance(v, dict) and all(
        isinstance(k, str) and _is_number(x) for k, x in v.items()), 'an object of numbers'),
    'transfer': (lambda v: v is None or (isinstance(v, dict) and _is_count(
        v.get('backbone_num_classes'))), 'an object with backbone_num_classes'),
    DIGEST_KEY: (lambda v: isinstance(v, str), 'a hex digest'),
}
_REQUIRED = ('model', 'num_classes')


def check_meta(meta: Any, where: str) -> dict[str, Any]:
  """``meta`` if it describes a model kdjax can build; ExportError naming the bad key."""
  from kdjax.methods import method_names
  from kdjax.models import model_names
  if not isinstance(meta, dict):
    raise ExportError(f'{where} must hold a JSON object, got {type(meta).__name__}; the '
                      'export is damaged: export or copy the model again')
  for key in _REQUIRED:
    if key not in meta:
      raise ExportError(f"{where} lacks the key '{key}'; the export is damaged or not "
                        "kdjax's: export or copy the model again")
  for key, (ok, accepted) in _META_FIELDS.items():
    if key in meta and not ok(meta[key]):
      raise ExportError(f"{where}: '{key}' must be {accepted}, got {meta[key]!r}; the "
                        'export is damaged: export or copy the model again')
  if meta['model'] not in model_names():
    raise ExportError(f"{where} names the model {meta['model']!r}, which kdjax does not "
                      f"know (accepted: {', '.join(model_names())})")
  # a KDCI-wrapped method is exported as '<base>+kdci'
  if meta.get('method') and meta['method'].removesuffix('+kdci') not in method_names():
    raise ExportError(f"{where} names the method {meta['method']!r}, which kdjax does not "
                      f"know (accepted: {', '.join(method_names())})")
  return meta


def read_meta(path: str) -> dict[str, Any]:
  """The export's metadata, checked (ExportError naming the file if it cannot be used)."""
  file = os.path.join(resolve(path), META_FILE)
  try:
    with open(file, encoding='utf-8') as f:
      meta = json.load(f)
  except (OSError, UnicodeDecodeError, ValueError) as e:
    raise ExportError(f'{file} is not readable JSON ({type(e).__name__}: {e}); the export is '
                      'damaged: export or copy the model again') from None
  return check_meta(meta, file)


def variables_digest(directory: str) -> str:
  """A digest of every file under an export's ``variables/`` (names, sizes, bytes).

  Checked before orbax reads anything: a truncated or changed store is then refused in
  one line, where orbax would fail part-way (leaving its pending reads to print
  tracebacks) or, worse, read changed values without complaint.
  """
  h = hashlib.blake2b(digest_size=16)
  for root, dirs, files in os.walk(directory):
    dirs.sort()
    for name in sorted(files):
      path = os.path.join(root, name)
      h.update(f'{os.path.relpath(path, directory)}\0{os.path.getsize(path)}\0'.encode())
      with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
          h.update(chunk)
  return h.hexdigest()


def disk_full(error: BaseException | None) -> bool:
  """Whether ``error`` (or one it came from) says the disk or the quota is full."""
  while error is not None:
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    if 'No space left on device' in str(error):  # some writers re-raise with the text only
      return True
    error = error.__cause__ or error.__context__
  return False


def _check_replaceable(path: str) -> None:
  """Refuses to replace a folder that holds anything save() did not write."""
  if not os.path.exists(path):
    return
  if not os.path.isdir(path):
    raise ExportError(f'{path} is a file, not an export; refusing to replace it (nothing was '
                      'changed): move it away or write the model elsewhere')
  foreign = sorted(set(os.listdir(path)) - _OWN_ENTRIES)
  if foreign:
    raise ExportError(f'{path} is not a kdjax export (it holds {foreign[:3]}); refusing to '
                      'replace it (nothing was changed): write the model elsewhere')


def _exchange(a: str, b: str) -> bool:
  """Atomically swaps two paths (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
  try:
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = libc.renameat2
  except (OSError, AttributeError):
    return False
  at_fdcwd, rename_exchange = -100, 2
  ok = renameat2(at_fdcwd, a.encode(), at_fdcwd, b.encode(), rename_exchange) == 0
  return ok


def _swap(staging: str, path: str) -> None:
  """Puts the complete export ``staging`` at ``path``; the old one stays whole until the
  new one is in place (an atomic exchange, or two renames that resolve() can recover)."""
  if not os.path.exists(path):
    os.rename(staging, path)
    return
  if _exchange(staging, path):
    shutil.rmtree(staging)
    return
  old = path + OLD_SUFFIX
  shutil.rmtree(old, ignore_errors=True)
  os.rename(path, old)
  os.rename(staging, path)
  shutil.rmtree(old)


def _recover(path: str) -> None:
  """Undoes what an interrupted save left: the old export back in place, no staging."""
  old = path + OLD_SUFFIX
  if not os.path.exists(path) and os.path.isfile(os.path.join(old, META_FILE)):
    os.rename(old, path)
  for leftover in (old, path + STAGING_SUFFIX):
    shutil.rmtree(leftover, ignore_errors=True)


def save(path: str, variables: dict[str, Any], meta: dict[str, Any]) -> None:
  """Writes an export, replacing an export already at ``path`` (never a folder holding
  anything else: ExportError).

  The new export is written completely beside the old one and then swapped in, so a
  failure at any point (a full disk, a kill) leaves the previous export intact. Its
  metadata records a digest of the values, checked by every ``load``. With several
  processes every one of them calls this (orbax saves collectively and writes host
  arrays from process 0); process 0 writes the metadata and swaps, and nobody returns
  before the export is complete.
  """
  from kdjax.train.mesh import is_main_process, sync_processes
  path = os.path.abspath(path)
  staging = path + STAGING_SUFFIX
  variables = jax.tree.map(np.asarray, jax.device_get(variables))
  if is_main_process():
    _check_replaceable(path)
    _recover(path)
  sync_processes(f'kdjax_export_start:{path}')
  try:
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(os.path.join(staging, VARIABLES_DIR), variables, force=True)
    if is_main_process():
      tmp = os.path.join(staging, META_FILE + '.tmp')
      digest = variables_digest(os.path.join(staging, VARIABLES_DIR))
      with open(tmp, 'w') as f:
        json.dump({**meta, DIGEST_KEY: digest}, f, indent=1, sort_keys=True)
      os.replace(tmp, os.path.join(staging, META_FILE))
      _swap(staging, path)
  except BaseException:
    if is_main_process():
      shutil.rmtree(staging, ignore_errors=True)  # the old export was not touched
    raise
  sync_processes(f'kdjax_export:{path}')


def load(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
  """Returns (meta, variables) with numpy leaves; ExportError naming the export if its
  metadata is unusable, its files miss their digest or its variables cannot be read."""
  path = resolve(path)
  meta = read_meta(path)
  variables_dir = os.path.join(path, VARIABLES_DIR)
  if not os.path.isdir(variables_dir):
    raise ExportError(f'{path} has no {VARIABLES_DIR}/ beside {META_FILE}; the export is '
                      'incomplete: export or copy the model again')
  if DIGEST_KEY not in meta:
    _warn_once(f'kdjax: warning: {path} records no digest of its files (exported by an '
               'older kdjax), so damage to it cannot be detected; export it again to add one')
  elif variables_digest(variables_dir) != meta[DIGEST_KEY]:
    raise ExportError(f'{variables_dir}: its files do not match the digest recorded when '
                      'the model was exported; the export is damaged: export or copy it again')
  try:
    with ocp.StandardCheckpointer() as ckptr:
      variables = ckptr.restore(variables_dir)
  except Exception as e:  # noqa: BLE001 - a damaged store fails in many ways
    from kdjax.train.checkpoint import _reason
    raise ExportError(f'{variables_dir} is unreadable ({_reason(e)}); the export is damaged: '
                      'export or copy the model again') from None
  if not isinstance(variables, dict) or 'params' not in variables:
    raise ExportError(f'{variables_dir} holds no model parameters; the export is damaged: '
                      'export or copy the model again')
  return meta, variables


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
  if message not in _WARNED:
    _WARNED.add(message)
    print(message, file=sys.stderr, flush=True)


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(k): tuple(v.shape) for k, v in flat}


def model_from_meta(meta: dict[str, Any], dtype: Any = jnp.float32) -> Any:
  """The Flax module an export's variables belong to.

  A transfer run's export (``meta['transfer']``) is a linear probe: the backbone
  ``meta['model']`` with its own class count, under a head for ``meta['num_classes']``.
  """
  from kdjax.models import create_model
  from kdjax.models.probe import LinearProbe
  transfer = meta.get('transfer')
  if not transfer:
    return create_model(meta['model'], meta['num_classes'], dtype)
  backbone = create_model(meta['model'], transfer['backbone_num_classes'], dtype)
  return LinearProbe(backbone, meta['num_classes'], dtype)


def describe(meta: dict[str, Any]) -> str:
  """'resnet8 with 10 classes', or 'linear probe (10 classes) on resnet8'."""
  if meta.get('transfer'):
    return f"linear probe ({meta['num_classes']} classes) on {meta['model']}"
  return f"{meta['model']} with {meta['num_classes']} classes"


def check_variables(meta: dict[str, Any], variables: dict[str, Any]) -> None:
  """Raises ExportError unless ``variables`` fit the model ``meta`` describes (names and
  shapes)."""
  model = model_from_meta(meta)
  expected = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 32, 32, 3),
                                                                             np.float32)))
  want = _shapes({'params': expected['params'], 'batch_stats': expected.get('batch_stats', {})})
  got = _shapes({'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})})
  missing = sorted(set(want) - set(got))
  unexpected = sorted(set(got) - set(want))
  misshaped = sorted(k for k in set(want) & set(got) if want[k] != got[k])
  if missing or unexpected or misshaped:
    parts = []
    if missing:
      parts.append(f'{len(missing)} missing (e.g. {missing[0]})')
    if unexpected:
      parts.append(f'{len(unexpected)} unexpected (e.g. {unexpected[0]})')
    if misshaped:
      k = misshaped[0]
      parts.append(f'{len(misshaped)} mis-shaped (e.g. {k}: expected {want[k]}, got {got[k]})')
    raise ExportError(f'variables do not fit {describe(meta)}: ' + '; '.join(parts))


def check_exported(path: str, model_name: str = '') -> dict[str, Any]:
  """Everything that can be wrong with an export, before any data is loaded: metadata,
  readable variables matching their digest, names and shapes fitting the model."""
  export_dir = resolve(path)
  meta, variables = load(export_dir)
  if model_name and meta['model'] != model_name:
    raise ExportError(f"{export_dir} holds a {meta['model']}, not a {model_name}; "
                      'fix the model name or the path')
  check_variables(meta, variables)
  return meta


def from_state(state: Any) -> dict[str, Any]:
  """A run's train state as an export's variables: the student's own, and the method's
  heads, statistics and state (KDCI's dictionary, CID's context) under ``method``."""
  return {'params': state.params['student'], 'batch_stats': state.batch_stats['student'],
          'method': {'params': state.params['method'], 'batch_stats': state.batch_stats['method'],
                     'state': state.method_state}}


def to_eval_variables(variables: dict[str, Any]) -> dict[str, Any]:
  """The inverse of ``from_state`` for what evaluation reads (``steps.build_eval``); an
  export without a method (a teacher, a converted model) has empty method entries."""
  m = variables.get('method', {}) or {}
  return {'params': {'student': variables['params'], 'method': m.get('params', {})},
          'batch_stats': {'student': variables['batch_stats'], 'method': m.get('batch_stats', {})},
          'method_state': m.get('state', {})}


def headline(evaluation: dict[str, float]) -> float:
  """The run's number: the first head's accuracy (``eval_heads`` puts the method's own
  first, e.g. KDCI's adjusted head or CID's interventional one)."""
  return next(v for k, v in evaluation.items() if k.startswith('test/accuracy/'))


class RunExports:
  """The exports a run writes into its workdir: ``best/`` whenever the headline accuracy
  improves (kept across resumes) and ``model/`` at the end, with the run's metadata and
  every head's test accuracy."""

  def __init__(self, workdir: str, meta: dict[str, Any]):
    self.workdir, self.meta = workdir, meta
    best = os.path.join(workdir, 'best')
    self.best_accuracy = (read_meta(best)['test_accuracy']
                          if os.path.exists(os.path.join(best, META_FILE)) else -1.0)

  def _save(self, name: str, state: Any, evaluation: dict[str, float]) -> None:
    heads = {k.split('/', 2)[2]: v for k, v in evaluation.items()
             if k.startswith('test/accuracy/')}
    save(os.path.join(self.workdir, name), from_state(state),
         {**self.meta, 'test_accuracy': headline(evaluation), 'test_accuracies': heads,
          'step': int(state.step)})

  def offer_best(self, state: Any, evaluation: dict[str, float]) -> None:
    if headline(evaluation) > self.best_accuracy:
      self.best_accuracy = headline(evaluation)
      self._save('best', state, evaluation)

  def final(self, state: Any, evaluation: dict[str, float]) -> None:
    self._save('model', state, evaluation)
    self.best_accuracy = max(self.best_accuracy, headline(evaluation))
