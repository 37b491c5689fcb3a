"""How batches reach the devices: gathered there by index, or sent by each host.

``device`` feed: the split is replicated on the devices once; per call only the
(K, B) index array is sent and the jitted chunk gathers the rows. One process only.

``host`` feed: every process holds the split on its host, draws the same (K, B)
indices, and gathers, on the host, only the rows of each batch that belong to its own
devices (``process_rows``); ``jax.make_array_from_process_local_data`` joins the
processes' rows into the global batch. A process therefore never reads or transfers
another process's examples during training; it still loads the whole split, because
the per-epoch permutation ranges over all of it. Both feeds give the same batches, so
the result does not depend on the feed or on the number of processes.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from kdjax.data import ArrayDataset
from kdjax.train.mesh import DATA_AXIS, batch_sharded, replicate

DeviceBatch = tuple[jax.Array, jax.Array, jax.Array]


def resolve_feed(feed: str, process_count: int) -> str:
  """``auto``: the device feed with one process, the host feed with several."""
  if feed == 'auto':
    return 'host' if process_count > 1 else 'device'
  return feed


def process_rows(batch_size: int, device_processes: Sequence[int], process: int) -> slice:
  """The rows of a batch sharded over the mesh devices that land on ``process``.

  ``device_processes[k]`` is the process owning the mesh's k-th device; the batch is
  split into equal consecutive blocks, one per device, so a process owns one
  contiguous slice when its devices are consecutive in the mesh (as ``jax.devices()``
  orders them).
  """
  n = len(device_processes)
  if batch_size % n:
    raise ValueError(f'batch of {batch_size} does not split over {n} devices')
  mine = [k for k, p in enumerate(device_processes) if p == process]
  if not mine:
    raise ValueError(f'process {process} owns no device of the mesh')
  if mine != list(range(mine[0], mine[-1] + 1)):
    raise ValueError(f'the devices of process {process} are not consecutive in the mesh')
  per_device = batch_size // n
  return slice(mine[0] * per_device, (mine[-1] + 1) * per_device)


class DeviceFeed:
  """The split replicated on the devices; batches gathered inside the jitted step."""

  gather = True

  def __init__(self, ds: ArrayDataset, mesh: Mesh):
    self.mesh = mesh
    self.images = replicate(ds.images, mesh)
    self.labels = replicate(ds.labels, mesh)

  def chunk_inputs(self, idx: np.ndarray) -> DeviceBatch:
    """``(images, labels, idx)`` for ``build_train_chunk(..., gather=True)``."""
    return self.images, self.labels, jax.device_put(idx, NamedSharding(self.mesh,
                                                                      P(None, DATA_AXIS)))

  def eval_batches(self, idx: np.ndarray, mask: np.ndarray) -> Iterator[DeviceBatch]:
    for i, m in zip(idx, mask):
      i, m = jax.device_put((i, m), batch_sharded(self.mesh))
      yield self.images[i], self.labels[i], m


class HostFeed:
  """The split on every host; each process sends only its rows of every batch."""

  gather = False

  def __init__(self, ds: ArrayDataset, mesh: Mesh):
    self.mesh = mesh
    self.images = ds.images
    self.labels = ds.labels
    self._owners = [d.process_index for d in mesh.devices.flat]

  def _rows(self, batch_size: int) -> slice:
    return process_rows(batch_size, self._owners, jax.process_index())

  def _global(self, local: np.ndarray, shape: tuple[int, ...], spec: P) -> jax.Array:
    return jax.make_array_from_process_local_data(NamedSharding(self.mesh, spec), local, shape)

  def chunk_inputs(self, idx: np.ndarray) -> DeviceBatch:
    """``(images[K, B], labels[K, B], idx[K, B])`` for ``build_train_chunk(..., gather=False)``."""
    mine = idx[:, self._rows(idx.shape[1])]
    spec = P(None, DATA_AXIS)
    return (self._global(self.images[mine], idx.shape + self.images.shape[1:], spec),
            self._global(self.labels[mine], idx.shape, spec),
            self._global(mine, idx.shape, spec))

  def eval_batches(self, idx: np.ndarray, mask: np.ndarray) -> Iterator[DeviceBatch]:
    rows = self._rows(idx.shape[1])
    spec = P(DATA_AXIS)
    for i, m in zip(idx, mask):
      mine = i[rows]
      yield (self._global(self.images[mine], i.shape + self.images.shape[1:], spec),
             self._global(self.labels[mine], i.shape, spec),
             self._global(m[rows], m.shape, spec))


def make_feed(kind: str, ds: ArrayDataset, mesh: Mesh, workers: int = 0, prefetch: int = 0
              ) -> DeviceFeed | HostFeed:
  """The feed for ``ds``; a streamed split (``data.pipeline='streaming'``) always gets the
  streaming feed (``kdjax.train.stream_feed``), which reads its rows from the source."""
  from kdjax.data.streaming import StreamingSplit  # pylint: disable=import-outside-toplevel
  if isinstance(ds, StreamingSplit):
    from kdjax.train.stream_feed import StreamingFeed  # pylint: disable=import-outside-toplevel
    return StreamingFeed(ds, mesh, workers, prefetch)
  return {'device': DeviceFeed, 'host': HostFeed}[kind](ds, mesh)


def epoch_inputs(feed, epoch: int, chunks: np.ndarray) -> Iterator[DeviceBatch]:
  """The chunk inputs of one epoch's (C, K, B) indices, in order; a feed that reads ahead
  (streaming) is given the whole epoch at once."""
  if hasattr(feed, 'epoch_inputs'):
    return feed.epoch_inputs(epoch, chunks)
  return (feed.chunk_inputs(c) for c in chunks)
