"""Helpers shared by the test files (import from here, not from other test files or conftest).

- NUM_TRAIN, NUM_EVAL: the sizes of conftest's on-disk imagenet2012 stand-in;
- numerics: `spatial_pads`, `assert_close` (of max|want|) and the bfloat16 bounds
  (`assert_rounded_once`, `assert_within_sum_bound`) of the kernel tests;
- training runs: `tiny_config`, `set_fields`, `split_arrays`, `steps_per_epoch`, `random_batch`,
  `restore_state`, `restore_params`, and `main_flags` (a config as main.py's command line);
- processes: `free_port`, `run_two_processes` (a 2-process JAX cluster of a worker module),
  `running_pod` (launch/local.sh's 2 processes of main.py) and `pod_logs`;
- any task's runs (segmentation, detection): `task_steps`, `restore_task_state`,
  `assert_8_devices_equal_1_device`, `assert_resume_is_bit_identical`, `assert_preflight_names`,
  `classifier_weights` and `init_from_state`.
"""
import contextlib
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import demo
from mnv3_jax.data import input_pipeline
from mnv3_jax.interop import pretrained
from mnv3_jax.model import MobileNetV3, blocks
from mnv3_jax.parallel import sharding
from mnv3_jax.tasks import registry
from mnv3_jax.train import checkpointing
from mnv3_jax.train import init_from
from mnv3_jax.train import preflight
from mnv3_jax.train import steps
from mnv3_jax.train import trainer

NUM_TRAIN, NUM_EVAL = 37, 11   # conftest.imagenet_dir: train labels 0..36, validation 0..10


# ---------------------------------------------------------------------------- numerics

def spatial_pads(h, w, k, stride, kind):
  return blocks.spatial_padding((1, h, w, 1), k, stride, kind)


def assert_close(got, want, tol):
  got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
  scale = max(float(np.abs(want).max()), 1e-6)
  np.testing.assert_allclose(got / scale, want / scale, rtol=0, atol=tol)


# bfloat16 bounds. The references run in float32 on the same (bf16-representable) inputs, so a
# bf16 result differs from them only by bf16 rounding. F32_TOL is what two float32 summation
# orders differ by (the float32 cases' bound, of max|want|); U is bf16's unit roundoff (8-bit
# significand: a rounding moves a value by at most U of itself).
F32_TOL = 2e-6
U = 2.0 ** -8


def assert_rounded_once(got, want):
  """got = bf16(a float32 result equal to want): |got - want| <= U |want| elementwise (+ the
  float32 slack). The native kernels accumulate in float32 and round once on the way out; a
  bf16 accumulator, a rounded intermediate or truncation instead of rounding exceeds it."""
  got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
  err = np.abs(got - want)
  bound = U * np.abs(want) + F32_TOL * max(float(np.abs(want).max()), 1e-6)
  worst = int(np.argmax(err - bound))
  assert err.flat[worst] <= bound.flat[worst], (
      f'error {err.flat[worst]:.3g} at want={want.flat[worst]:.4g} exceeds one bf16 rounding '
      f'{bound.flat[worst]:.3g}; max error/|want| = {float(np.max(err / (np.abs(want) + 1e-30))):.3g}')


def assert_within_sum_bound(got, want, abs_sum, n):
  """got = a sum of n products done in bf16 arithmetic (each product and partial sum rounded):
  |got - want| <= gamma_n * sum|products|, gamma_n = n U / (1 - n U) (Higham, Accuracy and
  Stability of Numerical Algorithms, 2002, eq. 3.5), with abs_sum = sum|products| in float32."""
  got, want, abs_sum = (np.asarray(a, np.float32) for a in (got, want, abs_sum))
  err = np.abs(got - want)
  bound = n * U / (1 - n * U) * abs_sum + F32_TOL * max(float(np.abs(want).max()), 1e-6)
  worst = int(np.argmax(err - bound))
  assert err.flat[worst] <= bound.flat[worst], (
      f'error {err.flat[worst]:.3g} exceeds the bf16 sum bound {bound.flat[worst]:.3g} (n={n})')


# ---------------------------------------------------------------------------- training runs

def tiny_config(data_dir, **overrides):
  """The demo config shrunk for tests: Small 0.35 at 32x32, batch 16.

  Tests share one config so that the persistent compilation cache (conftest.py) serves their
  common programs; 'conv' depthwise compiles 3x faster than 'shifted' on XLA CPU.
  """
  c = demo.demo_config()
  c.data.data_dir = str(data_dir)
  c.model.width = 0.35
  c.model.depthwise_impl = 'conv'
  c.optim.base_learning_rate = 0.1
  c.batch_size = 16
  c.log_every_steps = 2
  c.eval_every_steps = 1000
  c.checkpoint_every_steps = 3
  return set_fields(c, overrides)


def set_fields(config, overrides: dict):
  """Sets each dotted field of `overrides` ({'data.eval_split': 'test[:8]', ...}); returns config."""
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def split_arrays(data_config, split):
  """(images, labels) of a whole classification split, unaugmented (the eval pipeline), padding
  dropped."""
  config = data_config.copy_and_resolve_references()
  config.eval_split = split
  batches = list(input_pipeline.eval_iterator(config, global_batch_size=100, process_index=0,
                                              process_count=1))
  real = np.concatenate([b['mask'] for b in batches]) > 0
  return (np.concatenate([b['image'] for b in batches])[real],
          np.concatenate([b['label'] for b in batches])[real])


def steps_per_epoch(config):
  """As train_and_evaluate computes it, so that tests compile the same programs."""
  return input_pipeline.get_dataset_info(config.data).num_train_examples // config.batch_size


def random_batch(n, size, classes, seed=0):
  rng = np.random.default_rng(seed)
  return {'image': rng.uniform(-1, 1, (n, size, size, 3)).astype(np.float32),
          'label': rng.integers(0, classes, n).astype(np.int32)}


def restore_state(config, workdir):
  """(train state, step) of the newest checkpoint of a run of `config` in `workdir`."""
  ckpt = checkpointing.Checkpointer(str(workdir), save_every_steps=1)
  mesh = sharding.make_mesh()
  model = trainer.build_model(config)
  schedule, tx = trainer.build_optimizer(config, steps_per_epoch(config))
  init_fn, _, _ = steps.jit_steps(model, tx, schedule, config, mesh,
                                  trainer.qat_freeze(config, steps_per_epoch(config)))
  try:
    return ckpt.restore(trainer.abstract_train_state(init_fn, mesh))
  finally:
    ckpt.close()


def restore_params(config, workdir):
  state, step = restore_state(config, workdir)
  assert step == config.num_train_steps
  return jax.device_get(state)


def main_flags(config, demo_module=demo) -> list:
  """`--config.<key>=<value>` for every field in which `config` differs from the demo config of
  `demo_module` (configs/demo.py; e.g. configs/det_demo.py for detection)."""
  def flat(c, prefix=''):
    out = {}
    for key, value in c.items():
      out.update(flat(value, f'{prefix}{key}.') if hasattr(value, 'items')
                 else {prefix + key: value})
    return out

  base, ours = flat(demo_module.demo_config()), flat(config)
  name = demo_module.__name__.split('.')[-1]
  return [f'--config=configs/{name}.py'] + [f'--config.{k}={v}' for k, v in sorted(ours.items())
                                            if v != base[k]]


# ---------------------------------------------------------------------------- any task's runs

def task_steps(config, mesh):
  """(task, model, (init_fn, train_fn, eval_fn)) of `config`'s task, jitted for `mesh`, as
  train_and_evaluate builds them (so that tests share its compiled programs)."""
  task = registry.get(config)
  info = task.check_config()
  model = task.build_model(info)
  schedule, tx = trainer.build_optimizer(
      config, max(1, info.num_train_examples // config.batch_size))
  return task, model, steps.jit_steps(model, tx, schedule, config, mesh, task=task)


def restore_task_state(config, workdir):
  """The host train state of `config`'s run in `workdir` at step config.num_train_steps."""
  mesh = sharding.make_mesh()
  _, _, (init_fn, _, _) = task_steps(config, mesh)
  ckpt = checkpointing.Checkpointer(str(workdir), save_every_steps=1)
  try:
    state, step = ckpt.restore(trainer.abstract_train_state(init_fn, mesh))
  finally:
    ckpt.close()
  assert step == config.num_train_steps
  return jax.device_get(state)


def assert_8_devices_equal_1_device(config, batch, num_steps: int = 2):
  """`num_steps` train steps of `config` on `batch` (numpy, global) give the same params (<= 1e-5)
  and loss on 8 devices as on 1, and do change the params."""
  results = []
  for devices in (jax.devices()[:8], jax.devices()[:1]):
    mesh = sharding.make_mesh(devices)
    _, _, (init_fn, train_fn, _) = task_steps(config, mesh)
    state = init_fn(jax.random.key(0))
    for _ in range(num_steps):
      state, metrics = train_fn(state, sharding.to_global(batch, mesh))
    results.append((jax.device_get(state), metrics.compute()))
  (s8, m8), (s1, m1) = results
  deltas = jax.tree.map(lambda a, b: np.max(np.abs(a - b)), s8.params, s1.params)
  assert max(jax.tree.leaves(deltas)) <= 1e-5
  np.testing.assert_allclose(m8['loss'], m1['loss'], rtol=1e-5)
  init = jax.device_get(init_fn(jax.random.key(0)))
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: np.max(np.abs(a - b)), s1.params, init.params))
  assert max(moved) > 1e-4     # the steps changed the weights: equality is not vacuous


def assert_resume_is_bit_identical(make_config, tmp_path):
  """A run of 6 steps equals one of 3 steps resumed to 6, bit for bit; make_config(num_steps)."""
  trainer.train_and_evaluate(make_config(6), str(tmp_path / 'straight'))
  trainer.train_and_evaluate(make_config(3), str(tmp_path / 'resumed'))
  trainer.train_and_evaluate(make_config(6), str(tmp_path / 'resumed'))
  a, b = (restore_task_state(make_config(6), tmp_path / name) for name in ('straight', 'resumed'))
  jax.tree.map(np.testing.assert_array_equal, a, b)


def assert_preflight_names(config, overrides: dict, message: str, workdir) -> None:
  """`config` with `overrides` (`set_fields`) is refused by preflight with a ValueError containing
  `message`, before `workdir` exists."""
  set_fields(config, overrides)
  with pytest.raises(ValueError, match=re.escape(message)):
    preflight.check_config(config, str(workdir), sharding.make_mesh())
  assert not pathlib.Path(workdir).exists()


def classifier_weights(path, variant: str = 'small', width: float = 0.35):
  """A classifier's random variables (10 classes), saved as a variables checkpoint at `path`."""
  classifier = MobileNetV3(variant=variant, width=width, num_classes=10, depthwise_impl='conv')
  weights = jax.device_get(classifier.init(jax.random.key(7), jnp.zeros((1, 32, 32, 3))))
  pretrained.save(path, weights, classifier)
  return weights


def init_from_state(config):
  """(host train state of `config` started from config.init_from, the fresh one it replaced)."""
  mesh = sharding.make_mesh()
  task, model, (init_fn, _, _) = task_steps(config, mesh)
  loaded = init_from.read(config, task, model)
  fresh = init_fn(jax.random.key(0))
  fresh_host = jax.device_get(fresh)
  return jax.device_get(init_from.apply(fresh, loaded, task, sharding.replicated(mesh))), fresh_host


# ---------------------------------------------------------------------------- processes

ROOT = pathlib.Path(__file__).resolve().parents[1]


def free_port() -> int:
  """A TCP port of 127.0.0.1 free now (for a JAX coordinator)."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def run_two_processes(module: str, *args: str, timeout: int = 300) -> list:
  """Runs `python -m module PORT PROCESS_INDEX *args` twice (processes 0 and 1, 4 CPU devices
  each: one 8-device JAX cluster whose coordinator is PORT); asserts both exit 0 and that process 1
  printed 'process 1 of 2 devices 4 8'. Returns their outputs."""
  flags = [f for f in os.environ.get('XLA_FLAGS', '').split()
           if 'xla_force_host_platform_device_count' not in f]
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2',
             XLA_FLAGS=' '.join(flags + ['--xla_force_host_platform_device_count=4']))
  port = str(free_port())
  procs = [subprocess.Popen([sys.executable, '-m', module, port, str(i), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  try:
    logs = [p.communicate(timeout=timeout)[0] for p in procs]
  finally:
    for p in procs:
      p.kill()
  assert [p.returncode for p in procs] == [0, 0], logs
  assert 'process 1 of 2 devices 4 8' in logs[1], logs
  return logs


def pod_env() -> dict:
  """This process's environment (with conftest.py's XLA flags and compilation cache) for main.py."""
  return dict(os.environ, PYTHON=sys.executable, TF_CPP_MIN_LOG_LEVEL='2')


@contextlib.contextmanager
def running_pod(config, workdir, log_dir, flags=None, **env):
  """launch/local.sh: 2 processes x 4 devices of main.py; whatever of it still runs at the end
  (the launcher and its workers: one process group) is killed. flags: main.py's config flags
  (default: `main_flags(config)`, a classification run); env: extra environment."""
  pod = subprocess.Popen(
      ['bash', str(ROOT / 'launch' / 'local.sh'), '-n', '2', '-d', '4', '-l', str(log_dir), '--',
       *(flags or main_flags(config)), f'--workdir={workdir}'],
      cwd=ROOT, env={**pod_env(), **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True, start_new_session=True)
  try:
    yield pod
  finally:
    try:
      os.killpg(pod.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
    pod.wait()


def pod_logs(log_dir) -> str:
  """The last 4000 characters of each worker log of a pod run."""
  return '\n'.join(f'===== {p.name}\n{p.read_text()[-4000:]}'
                   for p in sorted(pathlib.Path(log_dir).glob('worker_*.log')))
