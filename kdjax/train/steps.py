"""The jitted train and eval steps, identical for every method.

One train step: augment on device -> frozen teacher forward -> student forward ->
method loss -> SGD update, then the method's epoch-end update at epoch boundaries.
``lax.scan`` fuses ``K`` steps into one call so the host touches the device once per
chunk. The step takes an already gathered batch; the chunk either gathers it by index
from the training set held on the devices (device feed) or receives the batches from
the hosts (host feed, see ``kdjax.train.feed``).
"""
from __future__ import annotations

from typing import Callable, Iterable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from kdjax.data import augment, normalize
from kdjax.methods import Batch, Method, MethodVars, ModelOutput
from kdjax.train.mesh import batch_sharded, replicated
from kdjax.train.state import TrainState, step_key
from kdjax.types import PyTree

Metrics = dict[str, jax.Array]


class DataSpec(NamedTuple):
  """Static description of the on-device dataset's preprocessing."""
  mean: tuple[float, ...]
  std: tuple[float, ...]
  crop_padding: int
  flip: bool


def forward(model: nn.Module, variables: PyTree, images: jax.Array, train: bool = False
            ) -> ModelOutput:
  logits, feats = model.apply(variables, images, train=train)
  return ModelOutput(logits, list(feats))


def build_train_step(student: nn.Module, teacher: nn.Module | None, method: Method,
                     method_config: ml_collections.ConfigDict, tx: optax.GradientTransformation,
                     data: DataSpec, steps_per_epoch: int, mesh: Mesh,
                     skip_nonfinite: bool = False
                     ) -> Callable[..., tuple[TrainState, Metrics]]:
  """``step(state, teacher_vars, images, labels, idx) -> (state, metrics)``, not jitted.

  ``images``/``labels`` are this step's batch (uint8 NHWC / int32, B rows) and ``idx``
  the (B,) training-set indices of its examples. With ``skip_nonfinite`` a step whose
  loss or gradients are not finite changes nothing but the step count (metric ``skipped``).
  """
  batch_sharding = batch_sharded(mesh)

  def step(state: TrainState, teacher_vars: PyTree, images: jax.Array, labels: jax.Array,
           idx: jax.Array) -> tuple[TrainState, Metrics]:
    aug_key, method_key = jax.random.split(step_key(state))
    x = jax.lax.with_sharding_constraint(images, batch_sharding)
    x = augment(aug_key, x, data.mean, data.std, data.crop_padding, data.flip)
    batch = Batch(x, labels, idx)
    epoch = state.step // steps_per_epoch
    teacher_out = None
    if teacher is not None:
      teacher_out = jax.lax.stop_gradient(forward(teacher, teacher_vars, x))

    def loss_fn(params: PyTree):
      (logits, feats), updates = student.apply(
          {'params': params['student'], 'batch_stats': state.batch_stats['student']},
          x, train=True, mutable=['batch_stats'])
      student_out = ModelOutput(logits, list(feats))
      out = method.loss(MethodVars(params['method'], state.batch_stats['method'],
                                   state.method_state),
                        student_out, teacher_out, batch, method_key, epoch, method_config)
      return out.loss, (out, updates['batch_stats'], logits)

    (loss, (out, student_stats, logits)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_step = state.step + 1
    method_state = jax.lax.cond(
        new_step % steps_per_epoch == 0,
        lambda s: method.end_epoch(s, epoch, method_config), lambda s: s, out.state)
    metrics = dict(out.metrics)
    metrics['loss'] = loss
    metrics['accuracy'] = jnp.mean(jnp.argmax(logits, -1) == batch.labels)
    new_state = state.replace(
        step=new_step, params=params, opt_state=opt_state, method_state=method_state,
        batch_stats={'student': student_stats, 'method': out.batch_stats})
    if skip_nonfinite:
      return _skip_if_nonfinite(state, new_state, loss, grads, metrics)
    return new_state, metrics

  return step


def _skip_if_nonfinite(old: TrainState, new: TrainState, loss: jax.Array, grads: PyTree,
                       metrics: Metrics) -> tuple[TrainState, Metrics]:
  """Keeps ``old``'s variables if the loss or any gradient is not finite. The step still
  counts, so the data order and the schedule go on as in an unskipped run."""
  finite = jnp.isfinite(loss)
  for g in jax.tree.leaves(grads):
    finite &= jnp.all(jnp.isfinite(g))
  keep = lambda n, o: jnp.where(finite, n, o)
  kept = new.replace(**{name: jax.tree.map(keep, getattr(new, name), getattr(old, name))
                        for name in ('params', 'opt_state', 'batch_stats', 'method_state')})
  return kept, {**metrics, 'skipped': (~finite).astype(jnp.int32)}


def build_train_chunk(step: Callable[..., tuple[TrainState, Metrics]], mesh: Mesh,
                      steps: int, gather: bool = True
                      ) -> Callable[..., tuple[TrainState, Metrics]]:
  """Jits ``steps`` consecutive steps: ``chunk(state, t_vars, images, labels, idx[K, B])``.

  With ``gather`` (device feed) ``images``/``labels`` are the whole training set on the
  devices and each step takes its rows ``idx[k]``; without it (host feed) they are the
  K batches themselves, ``images[K, B, ...]``, ``labels[K, B]``.
  The state is donated; metrics come back stacked per step, shape (K,). K > 1 fuses the
  steps into one ``lax.scan`` (fewer dispatches on accelerators); XLA's CPU backend runs
  convolutions inside loops far slower, so K = 1 calls the step without a loop.
  """
  def chunk(state, teacher_vars, images, labels, idx):
    def one(s, xs):
      x, y, i = (images[xs], labels[xs], xs) if gather else xs
      return step(s, teacher_vars, x, y, i)

    per_step = idx if gather else (images, labels, idx)
    if steps == 1:
      state, metrics = one(state, jax.tree.map(lambda a: a[0], per_step))
      return state, jax.tree.map(lambda m: m[None], metrics)
    return jax.lax.scan(one, state, per_step)

  return jax.jit(chunk, donate_argnums=(0,), out_shardings=replicated(mesh))


def build_eval(model: nn.Module, method: Method, method_config: ml_collections.ConfigDict,
               data: DataSpec, mesh: Mesh) -> Callable[..., Metrics]:
  """``evaluate(variables, batches) -> sums`` over ``(images, labels, mask)`` batches.

  The batches come from a feed (``kdjax.train.feed``), already on the devices.
  ``variables`` = {'params', 'batch_stats', 'method_state'} as in the train state. The
  last batch is padded and masked so every example counts exactly once; the result
  holds per-head correct counts (in ``eval_heads`` order: the first is the headline),
  the summed CE of the plain head and the count. One
  jitted call per batch, summed on the device (no loop inside jit: see build_train_chunk).
  """
  batch_sharding = batch_sharded(mesh)
  head_order: list[str] = []  # as eval_heads returns them; jit hands dicts back key-sorted

  @jax.jit
  def batch_sums(variables, images, y, m):
    x = normalize(jax.lax.with_sharding_constraint(images, batch_sharding), data.mean, data.std)
    out = forward(model, {'params': variables['params']['student'],
                          'batch_stats': variables['batch_stats']['student']}, x)
    heads = method.eval_heads(variables['params']['method'], variables['batch_stats']['method'],
                              variables['method_state'], out, method_config)
    head_order[:] = list(heads)  # recorded while tracing
    ce = optax.softmax_cross_entropy_with_integer_labels(out.logits, y)
    sums = {f'correct/{k}': jnp.sum((jnp.argmax(v, -1) == y) * m) for k, v in heads.items()}
    sums['loss'] = jnp.sum(ce * m)
    sums['count'] = jnp.sum(m)
    return sums

  def evaluate(variables, batches: Iterable[tuple[jax.Array, jax.Array, jax.Array]]):
    totals = None
    for images, labels, mask in batches:
      sums = batch_sums(variables, images, labels, mask)
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    ordered = {f'correct/{k}': totals[f'correct/{k}'] for k in head_order}
    return {**ordered, 'loss': totals['loss'], 'count': totals['count']}

  return evaluate
