"""Exported models: a trained network's variables plus what is needed to use it.

An export is a directory holding ``kdjax_model.json`` (model name, class count, data
normalisation, method) and ``variables/`` (an orbax checkpoint of ``params``,
``batch_stats`` and the method's variables). Teachers for ``distill`` and models for
``evaluate`` are read from exports; a kdjax workdir holds its final export in
``model/``, and the torch converter writes the same format.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

META_FILE = 'kdjax_model.json'
VARIABLES_DIR = 'variables'


class ExportError(ValueError):
  """A model export that is missing, unreadable or does not fit."""


def resolve(path: str) -> str:
  """The export directory for ``path`` (an export itself, or a workdir holding one)."""
  path = os.path.abspath(path)
  for candidate in (path, os.path.join(path, 'model')):
    if os.path.isfile(os.path.join(candidate, META_FILE)):
      return candidate
  raise ExportError(f'{path} holds no kdjax model (no {META_FILE}); give an exported model '
                    'directory or the workdir of a finished kdjax run')


def read_meta(path: str) -> dict[str, Any]:
  with open(os.path.join(resolve(path), META_FILE)) as f:
    return json.load(f)


def save(path: str, variables: dict[str, Any], meta: dict[str, Any]) -> None:
  """Writes an export (overwriting one already there).

  With several processes every one of them calls this (orbax saves collectively and
  writes host arrays from process 0); process 0 writes the metadata, and nobody returns
  before the export is complete.
  """
  from kdjax.train.mesh import is_main_process, sync_processes
  path = os.path.abspath(path)
  os.makedirs(path, exist_ok=True)
  variables = jax.tree.map(np.asarray, jax.device_get(variables))
  if os.path.exists(os.path.join(path, META_FILE)):  # until rewritten, the export is incomplete
    os.remove(os.path.join(path, META_FILE))
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(path, VARIABLES_DIR), variables, force=True)
  if is_main_process():
    tmp = os.path.join(path, META_FILE + '.tmp')
    with open(tmp, 'w') as f:
      json.dump(meta, f, indent=1, sort_keys=True)
    os.replace(tmp, os.path.join(path, META_FILE))  # written last: its presence means complete
  sync_processes(f'kdjax_export:{path}')


def load(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
  """Returns (meta, variables) with numpy leaves."""
  path = resolve(path)
  meta = read_meta(path)
  with ocp.StandardCheckpointer() as ckptr:
    variables = ckptr.restore(os.path.join(path, VARIABLES_DIR))
  return meta, variables


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
  """Cheap validation of an export: metadata and variable shapes, no array reads."""
  export_dir = resolve(path)
  meta = read_meta(export_dir)
  if model_name and meta['model'] != model_name:
    raise ExportError(f"{export_dir} holds a {meta['model']}, not a {model_name}; "
                      'fix the model name or the path')
  variables_dir = os.path.join(export_dir, VARIABLES_DIR)
  tree = None
  if os.path.isdir(variables_dir):
    with ocp.StandardCheckpointer() as ckptr:
      shapes = ckptr.metadata(variables_dir)
    tree = getattr(shapes, 'item_metadata', shapes)
    tree = getattr(tree, 'tree', tree)
  if not tree:
    raise ExportError(f'{export_dir} has no readable {VARIABLES_DIR}/ beside {META_FILE}; '
                      'the export is incomplete: export or copy the model again')
  check_variables(meta, dict(tree))
  return meta
