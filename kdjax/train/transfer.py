"""Mode ``transfer``: a new linear head on a trained model's frozen backbone.

This is how CID and ICD report transferability: the distilled student's features are
kept as they are, and only a linear classifier is trained on another dataset (STL-10,
Tiny-ImageNet, ... at 32x32). The run is an ordinary supervised run (``loop.fit``) whose student is
a :class:`kdjax.models.probe.LinearProbe`; this module holds what differs: reading the
backbone, the probe's initial variables, its optimizer mask, its normalisation and
what its export records so that ``evaluate`` can rebuild it.

The default protocol is giakoumoglou/distillers' ``cifar/transfer_student.py``, the only
public probe code of these papers (methods.md §8): the backbone's BatchNorm runs in
train mode and re-estimates its statistics on the target data
(``transfer.backbone_bn='adapt'``; ``'frozen'`` keeps the backbone's own), and the inputs
are normalised with the TARGET dataset's statistics (``transfer.normalization='target'``;
``'backbone'`` uses the statistics the backbone was trained with). The recipe (optimizer,
schedule, epochs) is in ``configs/transfer.py``.
"""
from __future__ import annotations

import copy
from typing import Any, NamedTuple

import jax
import ml_collections

from kdjax.cifar_tables import LOW_LR_MODELS
from kdjax.data import ArrayDataset
from kdjax.models import probe
from kdjax.train import export
from kdjax.types import PyTree



# The target statistics transfer_student.py normalises with; other targets use their
# own training split's (ArrayDataset.mean/std)
TARGET_STATS = {
    'stl10': ((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2712)),
    'tiny_imagenet': ((0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821)),
}
BACKBONE_BN = ('adapt', 'frozen')
NORMALIZATIONS = ('target', 'backbone')


class Backbone(NamedTuple):
  path: str                  # the export directory (resolved from a workdir if need be)
  meta: dict[str, Any]
  variables: dict[str, Any]  # {'params', 'batch_stats'} of the trained model
  backbone_bn: str = 'adapt'         # one of BACKBONE_BN
  normalization: str = 'target'      # one of NORMALIZATIONS


def load_backbone(config: ml_collections.ConfigDict) -> Backbone:
  """The backbone export of ``transfer.checkpoint``, checked."""
  path = export.resolve(config.transfer.checkpoint)
  meta, variables = export.load(path)
  export.check_variables(meta, variables)
  return Backbone(path, meta, {'params': variables['params'],
                               'batch_stats': variables.get('batch_stats', {})},
                  config.transfer.backbone_bn, config.transfer.normalization)


def run_config(config: ml_collections.ConfigDict, backbone: Backbone | None
               ) -> ml_collections.ConfigDict:
  """The config the run uses: in transfer mode the model is the backbone's architecture,
  and ``transfer.low_lr`` (if set) is the lr of the backbones that §1 trains at 0.01."""
  if backbone is None:
    return config
  config = copy.deepcopy(config)
  config.model.name = backbone.meta['model']
  if config.transfer.low_lr > 0 and config.model.name in LOW_LR_MODELS:
    config.optim.lr = config.transfer.low_lr
  return config


def export_fields(backbone: Backbone | None) -> dict[str, Any]:
  """What a transfer run's exports add to ``kdjax_model.json`` (see
  ``export.model_from_meta``): nothing for other runs."""
  if backbone is None:
    return {}
  return {'transfer': {'backbone': backbone.path,
                       'backbone_num_classes': backbone.meta['num_classes'],
                       'backbone_dataset': backbone.meta.get('dataset'),
                       'backbone_bn': backbone.backbone_bn,
                       'normalization': backbone.normalization}}


def normalization(train_ds: ArrayDataset, backbone: Backbone | None
                  ) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """(mean, std) for the run's inputs: the target dataset's (``TARGET_STATS``, else its
  training split's), or with ``normalization='backbone'`` the statistics the backbone
  was trained with."""
  if (backbone is not None and backbone.normalization == 'backbone'
      and 'mean' in backbone.meta and 'std' in backbone.meta):
    return tuple(backbone.meta['mean']), tuple(backbone.meta['std'])
  return TARGET_STATS.get(train_ds.name, (train_ds.mean, train_ds.std))


def init_probe(backbone: Backbone, num_classes: int, dtype: Any, key: jax.Array,
               sample: jax.Array) -> tuple[Any, PyTree]:
  """The probe module (built exactly as ``evaluate`` will rebuild it from the export) and
  its variables: the trained backbone's, and a fresh head."""
  meta = {'model': backbone.meta['model'], 'num_classes': num_classes,
          **export_fields(backbone)}
  # evaluate rebuilds the probe without adapt_bn: it only matters while training
  model = export.model_from_meta(meta, dtype).clone(adapt_bn=backbone.backbone_bn == 'adapt')
  return model, probe.init_variables(model, backbone.variables, key, sample)


def trainable(params: PyTree, backbone: Backbone | None) -> PyTree | None:
  """The optimizer's mask over ``{'student', 'method'}`` params: None (all) unless the
  student is a probe, whose backbone is frozen."""
  if backbone is None:
    return None
  return {'student': probe.trainable_mask(params['student']),
          'method': jax.tree.map(lambda _: True, params['method'])}
