"""How a process finds its cluster (mnv3_jax/parallel/distributed.py), and the launch/ scripts' commands."""
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mnv3_jax.parallel import distributed
from tests import support

ROOT = Path(__file__).resolve().parents[2]
SLURM_STEP = {'SLURM_JOB_ID': '4242', 'SLURM_STEP_NODELIST': 'localhost', 'SLURM_NTASKS': '2',
              'SLURM_PROCID': '0', 'SLURM_LOCALID': '0'}


def test_explicit_settings_from_flags_or_environment():
  env = {'MNV3_COORDINATOR_ADDRESS': '10.0.0.1:8476', 'MNV3_NUM_PROCESSES': '4',
         'MNV3_PROCESS_ID': '3'}
  assert distributed.detect(environ=env) == distributed.Cluster('explicit', '10.0.0.1:8476', 4, 3)
  # Flags win over the environment; explicit settings win over SLURM's.
  assert distributed.detect('h:1', 2, 0, environ={**env, **SLURM_STEP}) == distributed.Cluster(
      'explicit', 'h:1', 2, 0)
  assert distributed.detect('h:1', 1, 0, environ=SLURM_STEP) is None   # one process: no cluster


def test_slurm_and_single_host_detection():
  assert distributed.detect(environ=SLURM_STEP) == distributed.Cluster('slurm')
  assert distributed.detect(environ={**SLURM_STEP, 'SLURM_NTASKS': '1'}) is None
  assert distributed.detect(environ={'SLURM_JOB_ID': '1', 'SLURM_NTASKS': '2'}) is None  # no srun
  assert distributed.detect(environ={}) is None


@pytest.mark.parametrize('kwargs, match', [
    (dict(coordinator_address='h:1'), r"missing: \['num_processes', 'process_id'\]"),
    (dict(coordinator_address='h', num_processes=2, process_id=0), "coordinator_address='h'"),
    (dict(coordinator_address='h:1', num_processes=2, process_id=2), 'process_id=2'),
    (dict(coordinator_address='h:1', num_processes='two', process_id=0), "num_processes='two'"),
])
def test_bad_explicit_settings_are_rejected(kwargs, match):
  with pytest.raises(ValueError, match=match):
    distributed.detect(**kwargs, environ={})


def test_heartbeat_timeout():
  assert distributed.heartbeat_timeout(environ={}) == distributed.DEFAULT_HEARTBEAT_TIMEOUT_S
  assert distributed.heartbeat_timeout(environ={'MNV3_HEARTBEAT_TIMEOUT_S': '12'}) == 12
  with pytest.raises(ValueError, match='heartbeat_timeout_s=0'):
    distributed.heartbeat_timeout(0)



def test_two_processes_join_one_cluster_from_slurm_variables(tmp_path):
  """srun's environment alone is enough: both processes see 2 x 2 devices and sum across them."""
  script = ('from mnv3_jax.parallel import distributed\n'
            'cluster = distributed.initialize()\n'
            'import jax, jax.numpy as jnp, numpy as np\n'
            'from jax.sharding import Mesh, NamedSharding, PartitionSpec as P\n'
            'mesh = Mesh(np.asarray(jax.devices()), ("d",))\n'
            'x = jax.make_array_from_process_local_data(NamedSharding(mesh, P("d")),\n'
            '    np.full(2, jax.process_index() + 1.0, np.float32))\n'
            'total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, P()))(x)\n'
            'print(cluster.method, jax.process_index(), jax.process_count(), jax.device_count(),'
            ' float(total))\n')
  env = {k: v for k, v in os.environ.items() if not k.startswith(('MNV3_', 'SLURM_'))}
  env.update(SLURM_STEP, JAX_COORDINATOR_PORT=str(support.free_port()), JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=2')
  procs = [subprocess.Popen([sys.executable, '-c', script], cwd=ROOT, text=True,
                            env={**env, 'SLURM_PROCID': str(i), 'SLURM_LOCALID': str(i)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(2)]
  outs = [p.communicate(timeout=120)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs
  for i, out in enumerate(outs):
    assert f'slurm {i} 2 4 6.0' in out, out   # 2 x (1 + 1) + 2 x (2 + 2) / 2 devices each


def _run(*args, **env) -> str:
  result = subprocess.run(['bash', *args], cwd=ROOT, capture_output=True, text=True, check=True,
                          env={**os.environ, **env})
  return result.stdout


def test_launch_scripts_parse():
  for script in sorted((ROOT / 'launch').glob('*.s*')):
    subprocess.run(['bash', '-n', str(script)], check=True)


def test_tpu_pod_commands():
  pod = dict(DRY_RUN='1', TPU_NAME='pod', ZONE='us-central2-b')
  out = _run('launch/tpu_pod.sh', 'run', '--config=configs/small.py', '--workdir=gs://b/run',
             **pod)
  assert out.strip() == (
      "gcloud compute tpus tpu-vm ssh pod --zone=us-central2-b --worker=all --command='env "
      'LOG_DIR=mnv3_logs SESSION=mnv3 bash mnv3_jax/launch/tpu_pod.sh on-worker start '
      "--config=configs/small.py --workdir=gs://b/run'")
  assert re.search(r'--worker=all .*tar -xzf mnv3_jax.tgz .*pip install',
                   _run('launch/tpu_pod.sh', 'setup', **pod))
  assert '--worker=2 ' in _run('launch/tpu_pod.sh', 'tail', '2', **pod)
  assert 'on-worker stop' in _run('launch/tpu_pod.sh', 'stop', **pod)


def test_tpu_worker_side_start_status_stop(tmp_path):
  """What each TPU VM runs, here with a stand-in python3 that waits for SIGTERM."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  (bin_dir / 'python3').write_text('#!/bin/bash\necho "main $*"\ntrap "echo stopped; exit 0" TERM\n'
                                   'while true; do sleep 0.1; done\n')
  (bin_dir / 'python3').chmod(0o755)
  env = dict(HOME=str(tmp_path), PATH=f'{bin_dir}:{os.environ["PATH"]}', SESSION='mnv3_test',
             TMUX_TMPDIR=str(tmp_path))
  script = 'launch/tpu_pod.sh'
  assert 'started' in _run(script, 'on-worker', 'start', '--workdir=/w', "it's", **env)
  _poll(lambda: ': running' in _run(script, 'on-worker', 'status', **env))
  assert 'SIGTERM sent' in _run(script, 'on-worker', 'stop', **env)
  _poll(lambda: ': not running' in _run(script, 'on-worker', 'status', **env))
  log = next((tmp_path / 'mnv3_logs').glob('*.log'))
  assert log.read_text().splitlines() == ["main main.py --workdir=/w it's", 'stopped']


def _poll(condition, attempts=100):
  for _ in range(attempts):
    if condition():
      return
    time.sleep(0.1)
  raise AssertionError('condition not met after 10 s')


def test_slurm_script_one_process_per_node_sees_all_gpus(tmp_path):
  out = _run(str(ROOT / 'launch' / 'slurm.sbatch'), '--config=configs/large.py', DRY_RUN='1',
             SLURM_NTASKS_PER_NODE='1', SLURM_GPUS_ON_NODE='4', SLURM_SUBMIT_DIR=str(tmp_path))
  assert 'JAX_LOCAL_DEVICE_IDS=0,1,2,3' in out
  assert 'srun --kill-on-bad-exit=1 --output=logs/%x-%j-%t.log python3 main.py ' \
         '--config=configs/large.py' in out
