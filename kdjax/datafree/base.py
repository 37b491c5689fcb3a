"""What every synthesizer is, and the compiled round built from one.

A synthesizer is a record of pure functions over explicit state (generator parameters,
latents, optimizer states, memory bank, keys): ``init`` makes the state kept between
rounds, ``begin`` starts one synthesis round (fresh latents or pixels, a fresh inner
optimizer), ``step`` is one inner optimisation step, ``finish`` ends the round and
returns the synthesised images in [0, 1]. ``build_synthesize`` compiles them into
``synthesize(state, teacher_vars, student_vars, key, round) -> (state, images, metrics)``:
the inner steps run as one ``lax.fori_loop`` (or in chunks, see ``chunk_steps``).
Nothing here knows which method it runs.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from kdjax.models.capture import forward_with_bn
from kdjax.train.mesh import batch_sharded
from kdjax.types import PyTree

Metrics = dict[str, jax.Array]


class SynthContext(NamedTuple):
  """The static side of a data-free run: models, sizes, normalisation and settings."""
  teacher: nn.Module
  student: nn.Module
  generator: nn.Module | None
  num_classes: int
  image_shape: tuple[int, int, int]     # (H, W, C)
  mean: tuple[float, ...]
  std: tuple[float, ...]
  batch_size: int                       # images per synthesis round (per inner step)
  rounds_per_epoch: int
  config: ml_collections.FrozenConfigDict   # config.datafree
  mesh: Mesh

  @property
  def method_config(self) -> ml_collections.FrozenConfigDict:
    return self.config[self.config.method]


@dataclasses.dataclass(frozen=True)
class Synthesizer:
  """A data-free synthesis method (see the module docstring)."""
  name: str
  init: Callable[[jax.Array, PyTree, SynthContext], PyTree]   # (key, teacher_vars, ctx)
  begin: Callable[[PyTree, jax.Array, jax.Array, SynthContext], PyTree]
  step: Callable[[PyTree, PyTree, PyTree, jax.Array, SynthContext], PyTree]
  finish: Callable[[PyTree, PyTree, SynthContext], tuple[PyTree, jax.Array, Metrics]]
  default_config: Callable[[], ml_collections.ConfigDict]
  # images the round returns: batch_size (into a growing pool), or kd_steps * batch
  # (DAFL: the student trains on fresh generator samples, the pool is replaced)
  fresh_pool: bool = False
  # the name of an option out of its accepted values, with what is accepted (or None)
  check_config: Callable[[ml_collections.ConfigDict], str | None] = lambda cfg: None


_SYNTHESIZERS: dict[str, Synthesizer] = {}


def register(synth: Synthesizer) -> Synthesizer:
  if synth.name in _SYNTHESIZERS:
    raise ValueError(f'synthesizer {synth.name!r} registered twice')
  _SYNTHESIZERS[synth.name] = synth
  return synth


def synthesizer_names() -> list[str]:
  return sorted(_SYNTHESIZERS)


def get_synthesizer(name: str) -> Synthesizer:
  if name not in _SYNTHESIZERS:
    raise ValueError(f'unknown data-free method {name!r}; accepted: '
                     f'{", ".join(synthesizer_names())}')
  return _SYNTHESIZERS[name]


def uses_batchnorm(datafree_config: ml_collections.ConfigDict) -> bool:
  """Whether the configured synthesis matches the teacher's BatchNorm statistics."""
  return datafree_config[datafree_config.method].get('bn', 0.0) > 0


# --- pieces the synthesizers share -------------------------------------------------------

def normalize01(x: jax.Array, ctx: SynthContext) -> jax.Array:
  """[0, 1] images -> the teacher's input normalisation."""
  return (x - jnp.asarray(ctx.mean, jnp.float32)) / jnp.asarray(ctx.std, jnp.float32)


def denormalize(x: jax.Array, ctx: SynthContext) -> jax.Array:
  return x * jnp.asarray(ctx.std, jnp.float32) + jnp.asarray(ctx.mean, jnp.float32)


def shard_batch(x: jax.Array, ctx: SynthContext) -> jax.Array:
  """Synthesis batches are split over the data mesh like training batches."""
  return jax.lax.with_sharding_constraint(x, batch_sharded(ctx.mesh))


def teacher_forward(ctx: SynthContext, teacher_vars: PyTree, x: jax.Array):
  """Eval-mode teacher: (logits, feats, BatchNorm layers with their inputs)."""
  return forward_with_bn(ctx.teacher, teacher_vars, x, train=False)


def student_logits(ctx: SynthContext, student_vars: PyTree, x: jax.Array) -> jax.Array:
  """Eval-mode student (the reference switches it to eval while synthesising)."""
  logits, _ = ctx.student.apply(student_vars, x, train=False)
  return logits


def generate(ctx: SynthContext, gen_vars: PyTree, z: jax.Array) -> tuple[jax.Array, PyTree]:
  """Train-mode generator (batch statistics, as every reference synthesizer runs it):
  images in [0, 1] and the updated BatchNorm statistics."""
  images, updates = ctx.generator.apply(gen_vars, z, train=True, mutable=['batch_stats'])
  return images, updates['batch_stats']


def init_generator(key: jax.Array, ctx: SynthContext) -> PyTree:
  z = jnp.zeros((2, ctx.config.nz), jnp.float32)
  return ctx.generator.init(key, z, train=False)


def random_targets(key: jax.Array, n: int, num_classes: int, sort: bool) -> jax.Array:
  """Uniform random classes; the reference sorts them where it shows image grids."""
  y = jax.random.randint(key, (n,), 0, num_classes)
  return jnp.sort(y) if sort else y


def adam(lr: float, b1: float, b2: float) -> optax.GradientTransformation:
  """torch.optim.Adam (eps 1e-8 added to sqrt(v_hat), no weight decay)."""
  return optax.adam(lr, b1=b1, b2=b2, eps=1e-8)


def keep_best(loss: jax.Array, best_loss: jax.Array, new: PyTree, best: PyTree) -> PyTree:
  """The reference keeps the inputs of the iteration with the lowest total loss."""
  better = loss < best_loss
  return jax.tree.map(lambda n, b: jnp.where(better, n, b), new, best)


# --- the compiled round -------------------------------------------------------------------

def chunk_steps(total: int, steps_per_call: int) -> int:
  """Inner steps per compiled call: all of them (0 = automatic off the CPU), else the
  largest divisor of ``total`` not above ``steps_per_call``."""
  if steps_per_call <= 0 or steps_per_call >= total:
    return total
  return max(d for d in range(1, steps_per_call + 1) if total % d == 0)


class CompiledRound:
  """``round(state, teacher_vars, student_vars, key, rnd) -> (state, images, metrics)``.

  With ``per_call`` covering every inner step the whole round (begin, the inner loop,
  finish) is one jitted call; otherwise ``begin`` and ``finish`` are jitted on their own
  and the inner loop runs as a Python loop over jitted chunks of ``per_call`` steps (XLA's
  CPU backend runs convolutions inside loops much slower; the benchmark measures both).
  Results do not depend on the chunking. ``begin`` / ``inner`` / ``finish`` are exposed
  for the benchmark.
  """

  def __init__(self, synth: Synthesizer, ctx: SynthContext, total_steps: int, per_call: int):
    self.total_steps = total_steps
    self.per_call = chunk_steps(total_steps, per_call)

    def inner(carry, teacher_vars, student_vars, rnd, n):
      one = lambda c: synth.step(c, teacher_vars, student_vars, rnd, ctx)
      if n == 1:
        return one(carry)
      return jax.lax.fori_loop(0, n, lambda i, c: one(c), carry)

    def whole(state, teacher_vars, student_vars, key, rnd):
      carry = inner(synth.begin(state, key, rnd, ctx), teacher_vars, student_vars, rnd,
                    total_steps)
      return synth.finish(state, carry, ctx)

    self.whole = jax.jit(whole)
    self.begin = jax.jit(lambda state, key, rnd: synth.begin(state, key, rnd, ctx))
    self.inner = jax.jit(lambda c, t, s, r: inner(c, t, s, r, self.per_call),
                         donate_argnums=(0,))
    self.finish = jax.jit(lambda state, carry: synth.finish(state, carry, ctx))

  def __call__(self, state, teacher_vars, student_vars, key, rnd):
    if self.per_call == self.total_steps:
      return self.whole(state, teacher_vars, student_vars, key, rnd)
    carry = self.begin(state, key, rnd)
    for _ in range(self.total_steps // self.per_call):
      carry = self.inner(carry, teacher_vars, student_vars, rnd)
    return self.finish(state, carry)


def build_synthesize(synth: Synthesizer, ctx: SynthContext, total_steps: int,
                     steps_per_call: int) -> CompiledRound:
  """The compiled synthesis round of ``synth`` (see ``CompiledRound``)."""
  return CompiledRound(synth, ctx, total_steps, steps_per_call)
