"""Putting a run together: the student, its method's variables, the optimizer, the initial
state, and the step and evaluation built from them.

One ``assemble`` serves the run modes (``kdjax.train.modes``), the data-free loop, the
benchmark and the tests, so what is measured and tested is what trains. The mode decides
the method (``labels_only`` or ``configured``) before calling it; nothing here reads
``config.mode``.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from kdjax import methods
from kdjax.errors import ConfigError
from kdjax.methods import InitContext, Method
from kdjax.models import create_model
from kdjax.train import export, transfer
from kdjax.train.state import TrainState, learning_rate_schedule, make_optimizer
from kdjax.train.steps import DataSpec, Metrics, build_eval, build_train_step, forward
from kdjax.types import PyTree

MethodChoice = tuple[Method, ml_collections.FrozenConfigDict]


def labels_only(config: ml_collections.ConfigDict) -> MethodChoice:
  """Plain CE on the labels (teachers, baselines, linear probes), whatever the method
  section of the config says."""
  cfg = dict(name='ce', gamma=1.0, alpha=0.0, beta=0.0, temperature=config.method.temperature)
  return methods.get_method('ce'), ml_collections.FrozenConfigDict(cfg)


def configured(config: ml_collections.ConfigDict) -> MethodChoice:
  """The method the config names, wrapped by KDCI when ``method.kdci.enabled``."""
  return (methods.resolve(config.method.name, config.method),
          ml_collections.FrozenConfigDict(config.method))


class Teacher(NamedTuple):
  model: nn.Module
  variables: PyTree          # {'params', 'batch_stats'}
  meta: dict[str, Any]       # the export's metadata


def load_teacher(config: ml_collections.ConfigDict, num_classes: int) -> Teacher:
  """The frozen teacher export of ``teacher.checkpoint`` (checked against its digest and
  its model's shapes)."""
  meta, variables = export.load(config.teacher.checkpoint)
  if meta['num_classes'] != num_classes:
    raise ConfigError(f"config key 'teacher.checkpoint': the teacher predicts "
                      f"{meta['num_classes']} classes but {config.data.name} has {num_classes}")
  export.check_variables(meta, variables)
  model = export.model_from_meta(meta, jnp.dtype(config.model.dtype))
  return Teacher(model, {'params': variables['params'],
                         'batch_stats': variables['batch_stats']}, meta)


class Run(NamedTuple):
  """An assembled run: everything a loop, the benchmark or a test needs to step it."""
  student: nn.Module
  teacher: nn.Module | None
  method: Method
  method_config: ml_collections.FrozenConfigDict
  data: DataSpec
  schedule: optax.Schedule
  tx: optax.GradientTransformation
  state: TrainState          # the initial state (a buffer per leaf), not yet on the mesh
  steps_per_epoch: int

  def train_step(self, mesh: Mesh, skip_nonfinite: bool = False) -> Callable[..., Any]:
    """The generic step (``steps.build_train_step``), not jitted."""
    return build_train_step(self.student, self.teacher, self.method, self.method_config,
                            self.tx, self.data, self.steps_per_epoch, mesh,
                            skip_nonfinite=skip_nonfinite)

  def evaluator(self, mesh: Mesh) -> Callable[..., Metrics]:
    return build_eval(self.student, self.method, self.method_config, self.data, mesh)


def assemble(config: ml_collections.ConfigDict, method: MethodChoice, *, num_classes: int,
             num_train: int, image_shape: tuple[int, ...], data: DataSpec,
             steps_per_epoch: int, epochs: int | None = None,
             teacher: Teacher | None = None, train_labels: np.ndarray | None = None,
             backbone: transfer.Backbone | None = None) -> Run:
  """The run of ``config`` with ``method`` (from ``labels_only`` / ``configured``): model
  and method initialised from ``config.seed``, the optimizer over ``epochs``
  (default ``train.epochs``) of ``steps_per_epoch`` steps. With a ``backbone`` (mode
  transfer) the student is a linear probe on it. Pure: nothing is read or written."""
  method_, method_cfg = method
  init_key, method_key, state_key = jax.random.split(jax.random.PRNGKey(config.seed), 3)
  sample = jnp.zeros((2,) + tuple(image_shape), jnp.float32)
  dtype = jnp.dtype(config.model.dtype)
  if backbone is None:
    student = create_model(config.model.name, num_classes, dtype)
    student_vars = student.init(init_key, sample, train=False)
  else:
    student, student_vars = transfer.init_probe(backbone, num_classes, dtype, init_key, sample)
  teacher_model = teacher.model if teacher is not None else None
  # eager, not jitted: measured on the CPU, jitting init compiled each model's whole
  # graph anew (30 s for resnet56 where eager took 0.9 s with its ops already compiled)
  # and moved initial values by an ulp, so runs would no longer repeat earlier ones
  mvars = method_.init(InitContext(
      rng=method_key, student=forward(student, student_vars, sample),
      teacher=forward(teacher_model, teacher.variables, sample) if teacher_model else None,
      num_classes=num_classes, num_train=num_train, train_labels=train_labels,
      config=method_cfg))
  params = {'student': student_vars['params'], 'method': mvars.params}
  schedule = learning_rate_schedule(config.optim, steps_per_epoch,
                                    config.train.epochs if epochs is None else epochs)
  delayed = None
  if method_.delayed_params is not None:  # e.g. CID's interventional head before phase 2
    held, held_epochs = method_.delayed_params(mvars.params, method_cfg)
    delayed = ({'student': jax.tree.map(lambda _: False, params['student']), 'method': held},
               held_epochs * steps_per_epoch)
  tx = make_optimizer(config.optim, schedule, {
      'student': jax.tree.map(lambda _: True, params['student']),
      'method': method_.decay_mask(mvars.params)}, trainable=transfer.trainable(params, backbone),
      delayed=delayed)
  state = own_buffers(TrainState(
      step=jnp.zeros((), jnp.int32), params=params,
      batch_stats={'student': student_vars.get('batch_stats', {}), 'method': mvars.batch_stats},
      opt_state=tx.init(params), method_state=mvars.state, rng=state_key))
  return Run(student, teacher_model, method_, method_cfg, data, schedule, tx, state,
             steps_per_epoch)


def own_buffers(tree: PyTree) -> PyTree:
  """Every leaf in a buffer of its own: donating a state fails when two leaves alias one
  array (an initialiser may hand the same zeros to several)."""
  return jax.tree.map(lambda x: jnp.array(x, copy=True), tree)


def accuracies(sums: dict[str, jax.Array], prefix: str = '') -> dict[str, float]:
  """Evaluation sums (``steps.build_eval``) as ``{prefix}loss`` and one
  ``{prefix}accuracy/<head>`` per head, the headline first (the order of ``sums``:
  ``jax.device_get`` on the dict would sort its keys)."""
  sums = {k: float(v) for k, v in sums.items()}
  count = sums.pop('count')
  out = {f'{prefix}loss': sums.pop('loss') / count}
  out.update({f'{prefix}accuracy/{k.split("/", 1)[1]}': v / count for k, v in sums.items()})
  return out
