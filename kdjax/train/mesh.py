"""The device mesh: one 'data' axis, batches sharded on it, everything else replicated."""
from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places every leaf of ``tree`` on all devices of ``mesh``."""
  return jax.device_put(tree, replicated(mesh))


def initialize_distributed(config: Any) -> None:
  """Joins the ``config.distributed`` process group (nothing when it is disabled).

  Must run before anything touches a JAX backend: afterwards ``jax.devices()`` lists
  every process's devices and ``jit`` computations span them all.
  """
  d = config.distributed
  if not d.enabled:
    return
  # CPU processes exchange collectives over gloo (TCP); accelerators use their own
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=d.coordinator, num_processes=d.num_processes,
                             process_id=d.process_id, initialization_timeout=int(d.timeout))


def is_main_process() -> bool:
  """Process 0 writes metrics, exports' metadata and the console lines."""
  return jax.process_index() == 0


def sync_processes(name: str) -> None:
  """A barrier over all processes (nothing with one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)
