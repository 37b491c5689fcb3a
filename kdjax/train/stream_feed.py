"""The streaming feed: each process decodes only its rows of every batch, in grain workers.

The batch order is the in-memory pipeline's: the loop draws the epoch's permutation from
``(seed, epoch)`` and hands each call's (K, B) indices to the feed, so the position of
the input pipeline is the train state's step, which every checkpoint holds; a resumed run
asks for the same indices and, the crops being a function of (seed, epoch, index),
receives bitwise the same batches. No iterator state needs saving.

Per epoch, a process takes the rows of every batch that its devices hold
(``feed.process_rows``), and a grain pipeline (``MapDataset`` over those indices ->
``StreamingSplit.example`` in ``data.workers`` threads, ``data.prefetch`` examples
buffered ahead, in order) decodes them; PIL releases the GIL while decoding and
resizing, so threads run in parallel. ``device_prefetch`` batches are already sent to the
devices (``jax.make_array_from_process_local_data``, asynchronous) while the current
step runs. Evaluation pads the last batch and masks it as in memory; padded rows are not
read, and each process reads only its rows, so every validation image counts exactly once.
"""
from __future__ import annotations

import collections
import itertools
import os
from typing import Iterator, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from kdjax.data.streaming import StreamingSplit
from kdjax.train.feed import DeviceBatch, process_rows
from kdjax.train.mesh import DATA_AXIS


class StreamingFeed:
  """Batches decoded on the hosts from a :class:`StreamingSplit` (``gather = False``)."""

  gather = False

  def __init__(self, split: StreamingSplit, mesh: Mesh, workers: int = 0, prefetch: int = 0,
               device_prefetch: int = 2):
    self.split, self.mesh = split, mesh
    self.workers = workers or max(os.cpu_count() or 1, 1)
    self.prefetch = prefetch
    self.device_prefetch = max(device_prefetch, 1)
    self._owners = [d.process_index for d in mesh.devices.flat]

  def _rows(self, batch_size: int) -> slice:
    return process_rows(batch_size, self._owners, jax.process_index())

  def _global(self, local: np.ndarray, shape: tuple[int, ...], spec: P) -> jax.Array:
    return jax.make_array_from_process_local_data(NamedSharding(self.mesh, spec), local, shape)

  def _examples(self, flat: np.ndarray, epoch: int, valid: np.ndarray | None,
                group: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(images, labels) of ``flat`` in order, ``group`` at a time; rows not ``valid`` are
    zeros and are not read."""
    import grain  # pylint: disable=import-outside-toplevel
    split, size = self.split, self.split.image_shape

    def load(position: int) -> tuple[np.ndarray, np.int32]:
      if valid is not None and not valid[position]:
        return np.zeros(size, np.uint8), np.int32(0)
      image, label = split.example(int(flat[position]), epoch)
      return image, np.int32(label)

    options = grain.ReadOptions(num_threads=self.workers,
                                prefetch_buffer_size=self.prefetch or max(2 * group, 64))
    return iter(grain.MapDataset.range(len(flat)).map(load).to_iter_dataset(options).batch(group))

  def _ahead(self, batches: Iterator[DeviceBatch]) -> Iterator[DeviceBatch]:
    """Keeps ``device_prefetch`` batches in flight to the devices."""
    queue: collections.deque[DeviceBatch] = collections.deque()
    for b in batches:
      queue.append(b)
      if len(queue) > self.device_prefetch:
        yield queue.popleft()
    while queue:
      yield queue.popleft()

  def epoch_inputs(self, epoch: int, chunks: Sequence[np.ndarray]) -> Iterator[DeviceBatch]:
    """``(images[K, B], labels[K, B], idx[K, B])`` per (K, B) chunk of ``chunks``, in order;
    runs of equally shaped chunks are read ahead together (the epoch's last partial batch
    is a chunk of its own shape)."""
    groups = itertools.groupby(chunks, key=lambda c: c.shape)
    return itertools.chain.from_iterable(self._group_inputs(epoch, np.stack(list(g)))
                                         for _, g in groups)

  def _group_inputs(self, epoch: int, chunks: np.ndarray) -> Iterator[DeviceBatch]:
    _, k, b = chunks.shape
    mine = chunks[:, :, self._rows(b)]
    spec = P(None, DATA_AXIS)

    def build() -> Iterator[DeviceBatch]:
      examples = self._examples(mine.reshape(-1), epoch, None, mine.shape[1] * mine.shape[2])
      try:
        for local_idx, (images, labels) in zip(mine, examples):
          yield (self._global(images.reshape(local_idx.shape + images.shape[1:]),
                              (k, b) + images.shape[1:], spec),
                 self._global(labels.reshape(local_idx.shape), (k, b), spec),
                 self._global(local_idx, (k, b), spec))
      finally:  # a run stopped mid-epoch (SIGTERM) must not leave workers decoding
        examples.close()

    return self._ahead(build())

  def chunk_inputs(self, idx: np.ndarray, epoch: int = 0) -> DeviceBatch:
    """One chunk (K, B) on its own (benchmarks, tests); the loop uses ``epoch_inputs``."""
    return next(iter(self.epoch_inputs(epoch, idx[None])))

  def eval_batches(self, idx: np.ndarray, mask: np.ndarray) -> Iterator[DeviceBatch]:
    rows = self._rows(idx.shape[1])
    mine, valid = idx[:, rows], mask[:, rows]
    spec = P(DATA_AXIS)
    b = idx.shape[1]

    def build() -> Iterator[DeviceBatch]:
      examples = self._examples(mine.reshape(-1), 0, valid.reshape(-1) > 0, mine.shape[1])
      try:
        for m, (images, labels) in zip(valid, examples):
          yield (self._global(images, (b,) + images.shape[1:], spec),
                 self._global(labels, (b,), spec), self._global(m, (b,), spec))
      finally:
        examples.close()

    return self._ahead(build())


def streaming_splits(config, splits: tuple[str, ...]) -> list[StreamingSplit]:
  """The named splits of ``config.data`` read by the streaming pipeline."""
  from kdjax.data.streaming import load_streaming  # pylint: disable=import-outside-toplevel
  return [load_streaming(config.data, split, config.seed) for split in splits]


def image_shape(ds) -> tuple[int, ...]:
  """(S, S, 3) of an in-memory or a streamed split."""
  return tuple(ds.image_shape) if isinstance(ds, StreamingSplit) else tuple(ds.images.shape[1:])
