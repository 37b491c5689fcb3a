"""The training state and the optimizer built from the config."""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import ml_collections
import optax

PyTree = Any


@flax.struct.dataclass
class TrainState:
  """Everything a run needs to continue exactly: what a checkpoint holds.

  ``params``/``batch_stats`` are ``{'student': ..., 'method': ...}``; the teacher's
  variables live beside the state (frozen, never checkpointed with the student).
  """
  step: jax.Array
  params: PyTree
  batch_stats: PyTree
  opt_state: PyTree
  method_state: PyTree
  rng: jax.Array


def learning_rate_schedule(optim: ml_collections.ConfigDict, steps_per_epoch: int,
                           epochs: int) -> optax.Schedule:
  """Epoch-based schedules of the CIFAR protocol, expressed in optimizer steps.

  Milestones may be fractional epochs (reduced-budget runs scale the protocol's).
  """
  if optim.schedule == 'multistep':
    return optax.piecewise_constant_schedule(
        optim.lr, {round(m * steps_per_epoch): optim.decay_rate for m in optim.milestones})
  if optim.schedule == 'cosine':
    return optax.cosine_decay_schedule(optim.lr, epochs * steps_per_epoch,
                                       alpha=optim.get('min_lr', 0.0) / optim.lr)
  return optax.constant_schedule(optim.lr)


def make_optimizer(optim: ml_collections.ConfigDict, schedule: optax.Schedule,
                   decay_mask: PyTree, trainable: PyTree | None = None
                   ) -> optax.GradientTransformation:
  """torch SGD: weight decay added to the gradient before momentum (coupled).

  ``trainable`` (a bool tree like the params; None = all) freezes the False leaves:
  their update is exactly zero, with no weight decay and no momentum buffer.
  """
  sgd = optax.chain(
      optax.add_decayed_weights(optim.weight_decay, mask=decay_mask),
      optax.sgd(schedule, momentum=optim.momentum or None, nesterov=optim.nesterov))
  if trainable is None:
    return sgd
  labels = jax.tree.map(lambda t: 'train' if t else 'frozen', trainable)
  return optax.multi_transform({'train': sgd, 'frozen': optax.set_to_zero()}, labels)


def step_key(state: TrainState) -> jax.Array:
  """A per-step key that depends only on the seed and the step (resume-safe)."""
  return jax.random.fold_in(state.rng, state.step)
