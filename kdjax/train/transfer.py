"""Mode ``transfer``: a new linear head on a trained model's frozen backbone.

This is how CID and ICD report transferability: the distilled student's features are
kept as they are, and only a linear classifier is trained on another dataset (STL-10,
Tiny-ImageNet, ... at 32x32). The run is an ordinary ``loop.train`` run whose student is
a :class:`kdjax.models.probe.LinearProbe`; this module holds what differs: reading the
backbone, the probe's initial variables, its optimizer mask, its normalisation and
what its export records so that ``evaluate`` can rebuild it.
"""
from __future__ import annotations

import copy
from typing import Any, NamedTuple

import jax
import ml_collections

from kdjax.data import ArrayDataset
from kdjax.models import probe
from kdjax.train import export

PyTree = Any


class Backbone(NamedTuple):
  path: str                  # the export directory (resolved from a workdir if need be)
  meta: dict[str, Any]
  variables: dict[str, Any]  # {'params', 'batch_stats'} of the trained model


def load_backbone(config: ml_collections.ConfigDict) -> Backbone | None:
  """The backbone of a transfer run, or None in any other mode."""
  if config.mode != 'transfer':
    return None
  path = export.resolve(config.transfer.checkpoint)
  meta, variables = export.load(path)
  export.check_variables(meta, variables)
  return Backbone(path, meta, {'params': variables['params'],
                               'batch_stats': variables.get('batch_stats', {})})


def run_config(config: ml_collections.ConfigDict, backbone: Backbone | None
               ) -> ml_collections.ConfigDict:
  """The config the run uses: in transfer mode the model is the backbone's architecture."""
  if backbone is None:
    return config
  config = copy.deepcopy(config)
  config.model.name = backbone.meta['model']
  return config


def export_fields(backbone: Backbone | None) -> dict[str, Any]:
  """What a transfer run's exports add to ``kdjax_model.json`` (see
  ``export.model_from_meta``): nothing for other runs."""
  if backbone is None:
    return {}
  return {'transfer': {'backbone': backbone.path,
                       'backbone_num_classes': backbone.meta['num_classes'],
                       'backbone_dataset': backbone.meta.get('dataset')}}


def normalization(train_ds: ArrayDataset, backbone: Backbone | None
                  ) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """(mean, std) for the run's inputs: a backbone sees its own training normalisation,
  not the target dataset's (its filters and BatchNorm statistics were fitted to it)."""
  if backbone is not None and 'mean' in backbone.meta and 'std' in backbone.meta:
    return tuple(backbone.meta['mean']), tuple(backbone.meta['std'])
  return train_ds.mean, train_ds.std


def init_probe(backbone: Backbone, num_classes: int, dtype: Any, key: jax.Array,
               sample: jax.Array) -> tuple[Any, PyTree]:
  """The probe module (built exactly as ``evaluate`` will rebuild it from the export) and
  its variables: the trained backbone's, and a fresh head."""
  meta = {'model': backbone.meta['model'], 'num_classes': num_classes,
          **export_fields(backbone)}
  model = export.model_from_meta(meta, dtype)
  return model, probe.init_variables(model, backbone.variables, key, sample)


def trainable(params: PyTree, backbone: Backbone | None) -> PyTree | None:
  """The optimizer's mask over ``{'student', 'method'}`` params: None (all) unless the
  student is a probe, whose backbone is frozen."""
  if backbone is None:
    return None
  return {'student': probe.trainable_mask(params['student']),
          'method': jax.tree.map(lambda _: True, params['method'])}
