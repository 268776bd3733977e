"""Data parallelism over every device of every host: one 'data' mesh axis.

The batch is sharded along 'data'; the train state is replicated. Under `jax.jit` the BatchNorm
statistics and the gradient mean then cover the global batch (XLA inserts the all-reduces).
"""
import collections
import itertools
from typing import Iterable, Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh ('data',) over `devices` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over 'data'."""
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(global_batch_size: int, mesh: Mesh) -> None:
  """Raises ValueError unless the global batch splits evenly over devices and processes."""
  devices, processes = mesh.devices.size, jax.process_count()
  if global_batch_size < 1 or global_batch_size % devices or global_batch_size % processes:
    raise ValueError(f'batch_size {global_batch_size} must be a positive multiple of the device '
                     f'count {devices} (over {processes} process(es)).')


def to_global(batch: dict, mesh: Mesh) -> dict:
  """Process-local numpy batch {name: (B_local, ...)} -> global jax.Arrays (B_global, ...)."""
  sharding = batch_sharded(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def prefetch_to_mesh(batches: Iterable[dict], mesh: Mesh, size: int = 2) -> Iterator[dict]:
  """Transfers `size` batches ahead so host->device copies overlap with compute."""
  queue = collections.deque()
  batches = iter(batches)

  def enqueue(n):
    for batch in itertools.islice(batches, n):
      queue.append(to_global(batch, mesh))

  enqueue(size)
  while queue:
    yield queue.popleft()
    enqueue(1)
