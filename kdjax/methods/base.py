"""The method interface: what a distillation method adds to the generic train step.

A method is a record of pure functions. The train step (``kdjax.train.steps``) calls
them without knowing which method it runs: it forwards the student (and the frozen
teacher), hands both outputs to ``loss``, and applies the optimizer to the student's
and the method's parameters together.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from kdjax.losses.kd import cross_entropy, kl_div_loss
from kdjax.types import PyTree



class ModelOutput(NamedTuple):
  """A model forward: logits (B, C) and the reference feature list (NHWC maps, pooled last)."""
  logits: jax.Array
  feats: list[jax.Array]


class Batch(NamedTuple):
  images: jax.Array   # augmented, normalised, (B, H, W, 3)
  labels: jax.Array   # (B,) int32
  index: jax.Array    # (B,) int32 position of each example in the training set


@dataclasses.dataclass(frozen=True)
class InitContext:
  """What a method may look at when it creates its parameters and state."""
  rng: jax.Array
  student: ModelOutput            # a sample forward (shapes matter, values do not)
  teacher: ModelOutput | None
  num_classes: int
  num_train: int                  # training-set size (per-example memories need it)
  config: ml_collections.ConfigDict   # config.method (weights + this method's sub-config)
  train_labels: Any = None        # (num_train,) int32 host labels, for class-aware sampling


class MethodVars(NamedTuple):
  params: PyTree        # trained by the optimizer together with the student
  batch_stats: PyTree   # BatchNorm statistics of the method's heads
  state: PyTree         # anything else carried between steps (memories, dictionaries)


class LossOutput(NamedTuple):
  loss: jax.Array
  metrics: Mapping[str, jax.Array]   # scalars, averaged over the steps of a chunk
  batch_stats: PyTree
  state: PyTree


def _no_vars(ctx: InitContext) -> MethodVars:
  del ctx
  return MethodVars({}, {}, {})


def _identity_epoch_end(state: PyTree, epoch: jax.Array, config: ml_collections.ConfigDict) -> PyTree:
  del epoch, config
  return state


def _plain_head(params: PyTree, batch_stats: PyTree, state: PyTree, student: ModelOutput,
                config: ml_collections.ConfigDict) -> dict[str, jax.Array]:
  del params, batch_stats, state, config
  return {'student': student.logits}


def _decay_everything(params: PyTree) -> PyTree:
  return jax.tree.map(lambda _: True, params)


LossFn = Callable[..., LossOutput]


@dataclasses.dataclass(frozen=True)
class CheckContext:
  """What ``validate`` knows before any data is loaded, for a method's own checks: the
  shapes of the student's and the teacher's feature lists (one example, NHWC maps and
  the pooled vector last), from an abstract forward."""
  student_feats: tuple[tuple[int, ...], ...]
  teacher_feats: tuple[tuple[int, ...], ...] | None


# (option under config.method.<name>, test of its value, what is accepted)
Option = tuple[str, Callable[[Any], bool], str]


def _no_check(method_config: ml_collections.ConfigDict, ctx: CheckContext) -> None:
  del method_config, ctx


def positive(v: Any) -> bool:
  return v > 0


def non_negative(v: Any) -> bool:
  return v >= 0


def fraction(v: Any) -> bool:
  return 0 <= v <= 1


@dataclasses.dataclass(frozen=True)
class Method:
  """A distillation method.

  ``loss(vars, student, teacher, batch, rng, epoch, config) -> LossOutput`` receives the
  method's ``MethodVars`` (params being differentiated), the student and teacher
  outputs (teacher ``None`` for methods without one), the batch, a per-step RNG key,
  the current epoch as a traced int, and ``config.method``.
  """
  name: str
  loss: LossFn
  needs_teacher: bool = True
  init: Callable[[InitContext], MethodVars] = _no_vars
  # per-epoch state update, called inside jit at every epoch boundary
  end_epoch: Callable[[PyTree, jax.Array, ml_collections.ConfigDict], PyTree] = _identity_epoch_end
  # named logits to evaluate; the first is the headline number
  eval_heads: Callable[..., dict[str, jax.Array]] = _plain_head
  # which of the method's params get weight decay
  decay_mask: Callable[[PyTree], PyTree] = _decay_everything
  default_config: Callable[[], ml_collections.ConfigDict] = ml_collections.ConfigDict
  # (mask over the method's params, epoch): the True leaves are not updated (no decay, no
  # momentum) before that epoch; None: everything trains from the start
  delayed_params: Callable[[PyTree, ml_collections.ConfigDict], tuple[PyTree, int]] | None = None
  # the ranges of the options in default_config, checked by validate before any work
  options: tuple[Option, ...] = ()
  # checks that need the models (e.g. a feature index that must exist in both); raise
  # kdjax.config.ConfigError naming the key. Only called when ``needs_context``.
  check_config: Callable[[ml_collections.ConfigDict, CheckContext], None] = _no_check
  needs_context: bool = False


_METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
  if method.name in _METHODS:
    raise ValueError(f'method {method.name!r} registered twice')
  _METHODS[method.name] = method
  return method


def method_names() -> list[str]:
  return sorted(_METHODS)


def get_method(name: str) -> Method:
  if name not in _METHODS:
    raise ValueError(f'unknown method {name!r}; accepted: {", ".join(method_names())}')
  return _METHODS[name]


def check_options(method: Method, method_config: ml_collections.ConfigDict,
                  context: Callable[[], CheckContext]) -> None:
  """Raises ConfigError for an option of ``method`` outside its declared range, then runs
  its own ``check_config`` (``context`` is only built for methods that need it)."""
  from kdjax.errors import ConfigError
  sub = method_config.get(method.name)
  for key, ok, accepted in method.options:
    value = sub[key]
    if not ok(value):
      raise ConfigError(f"config key 'method.{method.name}.{key}' must be {accepted}, "
                        f'got {value!r}')
  if method.needs_context:
    method.check_config(method_config, context())


def feature_index(key: str, index: int, ctx: CheckContext, maps_only: bool = True) -> None:
  """ConfigError unless ``index`` picks a feature (a spatial map when ``maps_only``) that
  both the student and the teacher have."""
  from kdjax.errors import ConfigError
  for who, feats in (('student', ctx.student_feats), ('teacher', ctx.teacher_feats)):
    if feats is None:
      continue
    usable = [i for i, f in enumerate(feats) if len(f) == 4 or not maps_only]
    if index not in usable:
      raise ConfigError(f"config key '{key}' is {index}, but the {who} has feature "
                        f"{'maps' if maps_only else 'entries'} {usable[0]}..{usable[-1]}")


def classic_objective(student: ModelOutput, teacher: ModelOutput | None, labels: jax.Array,
                      config: ml_collections.ConfigDict, extra: jax.Array | float = 0.0
                      ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """``gamma * CE + alpha * KL_T + beta * extra``: the objective of methods.md §1."""
  ce = cross_entropy(student.logits, labels)
  total = config.gamma * ce + config.beta * extra
  metrics = {'ce': ce}
  if teacher is not None and config.alpha:
    kd = kl_div_loss(student.logits, teacher.logits, config.temperature)
    total = total + config.alpha * kd
    metrics['kd'] = kd
  if config.beta:
    metrics['method'] = jnp.asarray(extra, jnp.float32)
  return total, metrics
