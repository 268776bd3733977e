"""The JAX distributed runtime: one cluster over every process of a TPU pod, a SLURM job or a
local multi-process launch, with XLA collectives between them.

`initialize()` (main.py calls it before anything touches a device) finds out how this process was
started and calls `jax.distributed.initialize` accordingly, or does nothing on a single host:
  1. explicit: arguments (main.py's --coordinator_address, --num_processes, --process_id) or the
     environment variables MNV3_COORDINATOR_ADDRESS, MNV3_NUM_PROCESSES, MNV3_PROCESS_ID (what
     launch/local.sh sets); all three or none;
  2. SLURM: a job step of more than one task (srun); jax takes the coordinator from the step's
     first node (port derived from the job id), the process id from SLURM_PROCID and, for one
     process per GPU, the local GPU from SLURM_LOCALID (one process per node: list all the node's
     GPUs in JAX_LOCAL_DEVICE_IDS, as launch/slurm.sbatch does);
  3. Cloud TPU VM (libtpu installed, TPU chips on the PCI bus): jax reads the worker list and
     this worker's number from the VM metadata (a one-host slice becomes a 1-process cluster).
On CPU the collectives between processes are gloo over TCP (jax's default,
`jax_cpu_collectives_implementation='gloo'`).

Failure: every process sends heartbeats to the coordination service (hosted by process 0). One
that stops for `heartbeat_timeout_s` is declared dead, and every other process terminates with
"The following tasks are unhealthy (stopped sending heartbeats): <process id>"; if process 0 dies,
the others stop at once, reporting that the leader died. `fail_fast()` makes a process that
raises exit at once (rather than wait for the others in the shutdown barrier) so that the same
mechanism stops the rest.
"""
import contextlib
import dataclasses
import glob
import importlib.util
import os
import sys
from typing import Mapping, Optional

import jax
from absl import logging
from jax.experimental import multihost_utils

ENV_COORDINATOR = 'MNV3_COORDINATOR_ADDRESS'
ENV_NUM_PROCESSES = 'MNV3_NUM_PROCESSES'
ENV_PROCESS_ID = 'MNV3_PROCESS_ID'
ENV_HEARTBEAT = 'MNV3_HEARTBEAT_TIMEOUT_S'
DEFAULT_HEARTBEAT_TIMEOUT_S = 30   # jax's default is 100 s; a dead host should stop a pod sooner
_SLURM_VARS = ('SLURM_JOB_ID', 'SLURM_STEP_NODELIST', 'SLURM_NTASKS', 'SLURM_PROCID',
               'SLURM_LOCALID')   # what jax's SLURM detection reads
_GOOGLE_PCI_VENDOR = '0x1ae0'


@dataclasses.dataclass(frozen=True)
class Cluster:
  """How this process joins the cluster; None fields are left to jax's detection of `method`."""
  method: str                      # 'explicit', 'slurm' or 'tpu'
  coordinator_address: Optional[str] = None
  num_processes: Optional[int] = None
  process_id: Optional[int] = None


def _int(name: str, value) -> int:
  try:
    return int(value)
  except (TypeError, ValueError):
    raise ValueError(f'{name}={value!r} is invalid: need an integer.') from None


def _explicit(coordinator_address, num_processes, process_id, env) -> Optional[Cluster]:
  given = {'coordinator_address': coordinator_address or env.get(ENV_COORDINATOR),
           'num_processes': num_processes if num_processes is not None
                            else env.get(ENV_NUM_PROCESSES),
           'process_id': process_id if process_id is not None else env.get(ENV_PROCESS_ID)}
  missing = [k for k, v in given.items() if v in (None, '')]
  if len(missing) == 3:
    return None
  if missing:
    raise ValueError(f'Multi-process launch needs coordinator_address, num_processes and '
                     f'process_id (flags or {ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, '
                     f'{ENV_PROCESS_ID}); missing: {missing}.')
  address = str(given['coordinator_address'])
  host, _, port = address.rpartition(':')
  if not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise ValueError(f'coordinator_address={address!r} is invalid: need host:port, e.g. '
                     '10.0.0.1:8476.')
  count = _int('num_processes', given['num_processes'])
  index = _int('process_id', given['process_id'])
  if count < 1 or not 0 <= index < count:
    raise ValueError(f'process_id={index} and num_processes={count} are invalid: need '
                     'num_processes >= 1 and 0 <= process_id < num_processes.')
  return Cluster('explicit', address, count, index)


def _on_cloud_tpu_vm() -> bool:
  """libtpu installed and a Google TPU on the PCI bus (jax's own test for a Cloud TPU VM)."""
  if importlib.util.find_spec('libtpu') is None:
    return False
  for vendor in glob.glob('/sys/bus/pci/devices/*/vendor'):
    with open(vendor) as f:
      if f.read().strip() == _GOOGLE_PCI_VENDOR:
        return True
  return False


def detect(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
           process_id: Optional[int] = None,
           environ: Optional[Mapping[str, str]] = None) -> Optional[Cluster]:
  """The cluster this process belongs to, or None for a single process (see the module doc).

  environ: the environment to read (default os.environ); given one, the Cloud TPU check, which
    reads the hardware, is skipped. Raises ValueError for a partial or invalid explicit setting.
  """
  env = os.environ if environ is None else environ
  cluster = _explicit(coordinator_address, num_processes, process_id, env)
  if cluster is not None:
    return cluster if cluster.num_processes > 1 else None
  if all(k in env for k in _SLURM_VARS) and _int('SLURM_NTASKS', env['SLURM_NTASKS']) > 1:
    return Cluster('slurm')
  if environ is None and _on_cloud_tpu_vm():
    return Cluster('tpu')
  return None


def heartbeat_timeout(value: Optional[int] = None,
                      environ: Optional[Mapping[str, str]] = None) -> int:
  """Seconds without heartbeats after which a process counts as dead (argument, env, default)."""
  env = os.environ if environ is None else environ
  value = value if value is not None else env.get(ENV_HEARTBEAT, DEFAULT_HEARTBEAT_TIMEOUT_S)
  seconds = _int('heartbeat_timeout_s', value)
  if seconds < 1:
    raise ValueError(f'heartbeat_timeout_s={seconds} is invalid: need >= 1 second.')
  return seconds


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None,
               heartbeat_timeout_s: Optional[int] = None) -> Optional[Cluster]:
  """Joins the cluster this process was started in (no-op on a single host); returns it or None.

  Must run before any jax call that initializes a backend (jax.devices(), any computation).
  """
  cluster = detect(coordinator_address, num_processes, process_id)
  if cluster is None:
    return None
  timeout = heartbeat_timeout(heartbeat_timeout_s)
  method = {'explicit': 'deactivate', 'slurm': 'slurm', 'tpu': None}[cluster.method]
  jax.distributed.initialize(
      coordinator_address=cluster.coordinator_address, num_processes=cluster.num_processes,
      process_id=cluster.process_id, cluster_detection_method=method,
      heartbeat_timeout_seconds=timeout)
  # CPU (gloo) connects the processes at their first collective and gives up if one comes more
  # than 30 s after another: hold it now, while they are in step, not after uneven compiles.
  multihost_utils.sync_global_devices('mnv3_jax: all processes joined')
  logging.info('Joined a %s cluster as process %d of %d (heartbeat timeout %d s).',
               cluster.method, jax.process_index(), jax.process_count(), timeout)
  return cluster


@contextlib.contextmanager
def fail_fast():
  """In a multi-process run, an exception ends this process at once with status 1.

  Otherwise it would wait in jax's shutdown barrier (up to 5 minutes) while the others block in
  a collective; dying instead lets the coordination service stop them within the heartbeat
  timeout. A single process re-raises as usual.
  """
  try:
    yield
  except BaseException:  # pylint: disable=broad-except
    if not jax.distributed.is_initialized():
      raise
    logging.exception('Process %d failed; exiting now so that the other processes stop too.',
                      jax.process_index())
    logging.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)  # pylint: disable=protected-access
