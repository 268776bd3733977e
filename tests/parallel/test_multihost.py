"""A pod on this machine: launch/local.sh starts 2 processes x 4 CPU devices on 127.0.0.1 that
form one JAX cluster (gloo collectives), compared with 1 process x 8 devices (this pytest process,
see conftest.py).

The processes use this session's compilation cache, but on CPU only process 0 can hit it: jax
keys entries by a device topology that differs per process, and only process 0 writes.
"""
import os
import re
import signal
import time

import jax
import numpy as np
import pytest

from mnv3_jax.train import checkpointing
from mnv3_jax.data import input_pipeline
from mnv3_jax.parallel import sharding
from mnv3_jax.train import steps
from mnv3_jax.train import trainer
from mnv3_jax.model import MobileNetV3
from tests import support
from tests.support import steps_per_epoch, tiny_config

NUM_STEPS = 3
EVAL_SPLIT = 'test[:37]'   # 37 examples: shards of 19 and 18, both padded to 3 batches of 8


@pytest.fixture(scope='module')
def data_dir(digits_dir):
  return digits_dir


def pod_config(data_dir, **overrides):
  return tiny_config(data_dir, **{'data.eval_split': EVAL_SPLIT, **overrides})


def one_process(config):
  """(mesh, init_fn, train_fn, eval_fn) for `config` on this process's 8 devices."""
  mesh = sharding.make_mesh()
  model = MobileNetV3(**config.model)
  schedule, tx = trainer.build_optimizer(config, steps_per_epoch(config))
  return (mesh, *steps.jit_steps(model, tx, schedule, config, mesh))


def restore(config, workdir):
  """(state, step) of the newest checkpoint in workdir, restored on this process's 8 devices."""
  mesh, init_fn, _, _ = one_process(config)
  ckpt = checkpointing.Checkpointer(str(workdir), save_every_steps=1)
  try:
    return ckpt.restore(trainer.abstract_train_state(init_fn, mesh))
  finally:
    ckpt.close()


def reference_run(config, num_steps):
  """The pod's training on 1 process x 8 devices: each global batch is the two processes' local
  batches, concatenated (what the pod's global arrays hold)."""
  mesh, init_fn, train_fn, _ = one_process(config)
  shards = [input_pipeline.train_iterator(
      config.data, global_batch_size=config.batch_size, seed=config.seed, start_step=0,
      process_index=i, process_count=2) for i in range(2)]
  state = init_fn(jax.random.key(config.seed))
  initial = jax.device_get(state)   # before the train step donates it
  for _ in range(num_steps):
    local = [next(s) for s in shards]
    batch = {k: np.concatenate([b[k] for b in local]) for k in local[0]}
    state, _ = train_fn(state, sharding.to_global(batch, mesh))
  return initial, jax.device_get(state)


def max_diff(a, b) -> float:
  return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))), a, b)))


def test_pod_trains_as_one_process_and_hands_over_its_checkpoint(data_dir, tmp_path):
  config = pod_config(data_dir, num_train_steps=NUM_STEPS)
  workdir, log_dir = tmp_path / 'pod', tmp_path / 'logs'
  with support.running_pod(config, workdir, log_dir) as pod:
    out, _ = pod.communicate(timeout=900)
  assert pod.returncode == 0, f'{out}\n{support.pod_logs(log_dir)}'
  assert 'JAX process 1 of 2; 4 local / 8 global devices' in (log_dir / 'worker_1.log').read_text()

  # Same data, same steps: the pod's weights are those of one process on 8 devices.
  state, step = restore(config, workdir)
  assert step == NUM_STEPS
  state = jax.device_get(state)
  initial, expected = reference_run(config, NUM_STEPS)
  assert max_diff(state.params, expected.params) <= 1e-5
  assert max_diff(state.batch_stats, expected.batch_stats) <= 1e-5
  assert max_diff(state.params, initial.params) > 1e-3   # it trained: equality is not vacuous

  # Evaluation: process 0 reports the global result (the other logs no progress), each of the 37
  # examples counted once, and it is what one process computes from the same weights.
  found = re.search(r'eval step 3/3  top1 ([\d.]+)%  EMA top1 ([\d.]+)%.*  (\d+) images',
                    (log_dir / 'worker_0.log').read_text())
  assert found, support.pod_logs(log_dir)
  assert 'eval step' not in (log_dir / 'worker_1.log').read_text()
  mesh, _, _, eval_fn = one_process(config)
  raw, ema = (trainer.evaluate(eval_fn, state.variables(ema), config.data, config, mesh)
              for ema in (False, True))
  assert found.groups() == (f"{100 * raw['top1']:.1f}", f"{100 * ema['top1']:.1f}", '37')
  assert raw['count'] == 37

  # One process restores the pod's checkpoint and trains on.
  metrics = trainer.train_and_evaluate(pod_config(data_dir, num_train_steps=NUM_STEPS + 2),
                                     str(workdir))
  assert metrics['eval_count'] == metrics['ema_count'] == 37
  state, step = restore(config, workdir)
  assert step == NUM_STEPS + 2


def _wait_for(pattern, path, process, timeout):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if path.exists() and re.search(pattern, path.read_text()):
      return
    assert process.poll() is None, f'the pod exited early:\n{support.pod_logs(path.parent)}'
    time.sleep(0.5)
  raise AssertionError(f'{pattern!r} not in {path} after {timeout} s:\n{support.pod_logs(path.parent)}')


def test_a_lost_process_stops_the_others_with_its_name(data_dir, tmp_path):
  config = pod_config(data_dir, num_train_steps=10_000)
  log_dir = tmp_path / 'logs'
  # 15 s instead of the default 30 s without heartbeats: the test waits for it.
  with support.running_pod(config, tmp_path / 'pod', log_dir, MNV3_HEARTBEAT_TIMEOUT_S='15') as pod:
    launched = pod.stdout.readline() + pod.stdout.readline()   # 'worker <i>: pid <pid>, ...'
    pids = dict(re.findall(r'worker (\d): pid (\d+)', launched))
    # Process 0 (compiled programs in the cache) trains, i.e. waits for process 1 in a collective.
    _wait_for(r'compiling the train step', log_dir / 'worker_0.log', pod, timeout=300)
    killed = time.monotonic()
    os.kill(int(pids['1']), signal.SIGKILL)
    out, _ = pod.communicate(timeout=120)
    stopped = time.monotonic() - killed
  survivor = (log_dir / 'worker_0.log').read_text()
  assert re.search(r'worker 0: exit status [1-9]', out), f'{out}\n{support.pod_logs(log_dir)}'
  assert stopped < 60, f'the survivor took {stopped:.0f} s to stop'
  assert re.search(r'unhealthy \(stopped sending heartbeats\):\s*1\b', survivor), support.pod_logs(log_dir)
  assert 'in _train_loop' in survivor   # it was stopped in the train loop (Python's stack dump)
