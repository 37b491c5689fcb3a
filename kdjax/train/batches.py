"""Which examples each step sees: the epoch's permutation from (seed, epoch), cut into the
compiled calls' (K, B) index chunks, and the padded, masked order of evaluation.

Everything here is a pure function of the run's seed and position, so a resumed run (or
another process count, feed or worker count) sees exactly the same batches.
"""
from __future__ import annotations

import math

import jax
import numpy as np


def epoch_indices(seed: int, epoch: int, num_examples: int, batch_size: int) -> np.ndarray:
  """The (steps, batch) dataset indices of one epoch: a permutation fixed by (seed, epoch).

  The incomplete last batch is dropped so that every step has the same shape.
  """
  steps = num_examples // batch_size
  perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
  return perm[:steps * batch_size].reshape(steps, batch_size).astype(np.int32)


def last_batch_size(num_examples: int, batch_size: int, drop_last: bool, devices: int) -> int:
  """Rows of the epoch's last partial batch: 0 with ``drop_last``, else the remainder
  trimmed to a multiple of ``devices`` (a batch is split evenly over the devices; at most
  ``devices - 1`` examples an epoch are left out, a different few each epoch)."""
  if drop_last:
    return 0
  rest = num_examples % batch_size
  return rest - rest % devices


def last_batch(seed: int, epoch: int, num_examples: int, batch_size: int, size: int
               ) -> np.ndarray:
  """The (1, size) indices of the partial batch after ``epoch_indices``' full ones (the
  same permutation's tail)."""
  perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
  start = num_examples // batch_size * batch_size
  return perm[start:start + size].reshape(1, size).astype(np.int32)


def epoch_chunks(seed: int, epoch: int, num_examples: int, batch_size: int, k: int,
                 offset: int, last: int) -> list[np.ndarray]:
  """The epoch's calls from step ``offset`` on: (k, B) chunks of the full batches, then
  (with ``last`` > 0) the partial batch as a (1, last) call of its own shape (the train
  chunk is compiled once more for it; its rows are all real examples, so BatchNorm
  statistics and the losses see no padding)."""
  idx = epoch_indices(seed, epoch, num_examples, batch_size)[offset:]
  chunks = list(idx.reshape(-1, k, batch_size))
  if last:
    chunks.append(last_batch(seed, epoch, num_examples, batch_size, last))
  return chunks


def eval_indices(num_examples: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Sequential indices padded to whole batches, and the mask of the real ones."""
  steps = math.ceil(num_examples / batch_size)
  idx = np.arange(steps * batch_size)
  mask = (idx < num_examples).astype(np.float32)
  idx = np.where(idx < num_examples, idx, 0).astype(np.int32)
  return idx.reshape(steps, batch_size), mask.reshape(steps, batch_size)


def chunk_size(steps_per_epoch: int, steps_per_call: int) -> int:
  """The largest divisor of the epoch's step count not above ``steps_per_call``.

  Every call then has the same shape (one compilation) and epochs end on a call boundary.
  """
  return max(d for d in range(1, min(steps_per_epoch, steps_per_call) + 1)
             if steps_per_epoch % d == 0)


def steps_per_call(configured: int, streaming: bool = False) -> int:
  """Steps per compiled call when ``train.steps_per_call`` is 0: one on the CPU (XLA runs
  convolutions inside loops far slower there) and for streamed data (a call per batch
  read), else a ``lax.scan`` of 100."""
  if configured:
    return configured
  return 1 if streaming or jax.devices()[0].platform == 'cpu' else 100


def due(epochs_done: int, every: int, epochs: int) -> bool:
  """Whether an epoch-periodic action (evaluate, checkpoint) falls after ``epochs_done``
  epochs: every ``every`` epochs, and always after the last."""
  return epochs_done % every == 0 or epochs_done == epochs
