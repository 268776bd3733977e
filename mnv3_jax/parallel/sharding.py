"""Data parallelism over every device of every host: one 'data' mesh axis.

The batch is sharded along 'data'; the train state is replicated. Under `jax.jit` the BatchNorm
statistics and the gradient mean then cover the global batch (XLA inserts the all-reduces).

XLA cannot partition the native CPU kernels' custom calls (`ops.native`): given a batch-sharded
input it all-gathers the whole batch onto every device, and every device repeats all the work.
`per_shard` runs such a call per device inside `jax.shard_map` instead; it needs the mesh at trace
time, which `in_mesh` provides (`train.steps.jit_steps` traces its steps under it).
"""
import collections
import contextlib
import functools
import itertools
from typing import Callable, Iterable, Iterator, Optional, Sequence

import jax
import numpy as np
from jax._src import core as _core   # trace_state_clean: is a trace (jit, shard_map...) under way
from jax.sharding import AbstractMesh, Mesh, NamedSharding, PartitionSpec as P

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


@contextlib.contextmanager
def in_mesh(mesh: Mesh):
  """Makes `mesh` the active mesh of the code traced inside (see `per_shard`).

  Outside a trace this is `jax.set_mesh(mesh)` (the mesh is part of jit's cache key, so a function
  traced before without it is traced again); inside one (e.g. the body of a jitted step) it sets
  the abstract mesh, as `jax.shard_map` does. The mesh's axes must be Auto (`make_mesh`'s are).
  """
  if _core.trace_state_clean():
    with jax.set_mesh(mesh):
      yield
  else:
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      yield


def active_mesh() -> Optional[AbstractMesh]:
  """The (abstract) mesh `per_shard` would split over: the active mesh when its 'data' axis has
  more than one device and no axis is manual (not in the body of a `jax.shard_map`, where the
  batch is already this device's shard); else None."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or DATA_AXIS not in mesh.axis_names or mesh.manual_axes:
    return None
  return mesh if mesh.shape[DATA_AXIS] > 1 else None


def per_shard(fn: Callable, batched: Sequence[jax.Array], replicated: Sequence = ()):
  """fn(*batched, *replicated), run per device when a mesh is active (see `active_mesh`).

  `batched` arrays share the leading (batch) dimension N; `replicated` operands (per-channel
  kernels, scales) are passed whole; every output of `fn` has the leading dimension of its
  inputs' batch (fn must compute output shapes from its arguments: it sees N / devices). Each
  device then computes its shard of the outputs from its shard of the batch, where XLA would
  all-gather the batch for an opaque custom call and repeat the whole computation on every device.
  Falls back to the plain call on one device, without an active mesh, in a manual (shard_map)
  context, or when N does not divide by the 'data' axis size.
  """
  mesh = active_mesh()
  n = batched[0].shape[0]
  if mesh is None or any(a.shape[0] != n for a in batched) or n % mesh.shape[DATA_AXIS]:
    return fn(*batched, *replicated)
  specs = (P(DATA_AXIS),) * len(batched) + (P(),) * len(replicated)
  # check_vma=False: the custom calls carry no varying-axes rule; every output is batch-sharded.
  return jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=P(DATA_AXIS),
                       check_vma=False)(*batched, *replicated)


def traced_in_mesh(fn: Callable, mesh: Mesh) -> Callable:
  """`fn` that runs (is traced, when jitted) with `mesh` active: the native kernels it calls then
  run per device on a batch sharded over `mesh` (see `per_shard`)."""
  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with in_mesh(mesh):
      return fn(*args, **kwargs)
  return wrapped
