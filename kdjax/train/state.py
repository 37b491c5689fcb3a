"""The training state and the optimizer built from the config."""
from __future__ import annotations

from typing import NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from kdjax.types import PyTree



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


class HoldState(NamedTuple):
  count: jax.Array
  inner: PyTree


def hold_until(inner: optax.GradientTransformation, start_step: int
               ) -> optax.GradientTransformation:
  """``inner`` does nothing before ``start_step`` updates: zero updates and its state
  (e.g. momentum) left untouched, as torch's SGD skips a parameter without a gradient."""
  def init(params):
    return HoldState(jnp.zeros((), jnp.int32), inner.init(params))

  def update(updates, state, params=None):
    new_updates, new_inner = inner.update(updates, state.inner, params)
    active = state.count >= start_step
    new_updates = jax.tree.map(lambda u: jnp.where(active, u, jnp.zeros_like(u)), new_updates)
    new_inner = jax.tree.map(lambda n, o: jnp.where(active, n, o), new_inner, state.inner)
    return new_updates, HoldState(optax.safe_increment(state.count), new_inner)

  return optax.GradientTransformation(init, update)


def make_optimizer(optim: ml_collections.ConfigDict, schedule: optax.Schedule,
                   decay_mask: PyTree, trainable: PyTree | None = None,
                   delayed: tuple[PyTree, int] | None = None) -> optax.GradientTransformation:
  """torch SGD: weight decay added to the gradient before momentum (coupled).

  ``trainable`` (a bool tree like the params; None = all) freezes the False leaves:
  their update is exactly zero, with no weight decay and no momentum buffer.
  ``delayed = (mask, start_step)`` holds the True leaves of ``mask`` (no update, no
  decay, no momentum) for the first ``start_step`` steps; the lr schedule runs on.
  """
  sgd = optax.chain(
      optax.add_decayed_weights(optim.weight_decay, mask=decay_mask),
      optax.sgd(schedule, momentum=optim.momentum or None, nesterov=optim.nesterov))
  if trainable is None and delayed is None:
    return sgd
  trainable = jax.tree.map(lambda _: True, decay_mask) if trainable is None else trainable
  held = jax.tree.map(lambda _: False, trainable) if delayed is None else delayed[0]
  labels = jax.tree.map(lambda t, h: 'frozen' if not t else 'delayed' if h else 'train',
                        trainable, held)
  transforms = {'train': sgd, 'frozen': optax.set_to_zero()}
  if delayed is not None:
    # optax.sgd with the hold between the momentum and the (always counting) schedule
    held_part = optax.chain(optax.add_decayed_weights(optim.weight_decay, mask=decay_mask),
                            optax.trace(optim.momentum, optim.nesterov) if optim.momentum
                            else optax.identity())
    transforms['delayed'] = optax.chain(hold_until(held_part, delayed[1]),
                                        optax.scale_by_learning_rate(schedule))
  return optax.multi_transform(transforms, labels)


def step_key(state: TrainState) -> jax.Array:
  """A per-step key that depends only on the seed and the step (resume-safe)."""
  return jax.random.fold_in(state.rng, state.step)
