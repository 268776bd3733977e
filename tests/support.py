"""Helpers shared by the test files (import from here, not from other test files or conftest).

- NUM_TRAIN, NUM_EVAL: the sizes of conftest's on-disk imagenet2012 stand-in;
- numerics: `spatial_pads`, `assert_close` (of max|want|) and the bfloat16 bounds
  (`assert_rounded_once`, `assert_within_sum_bound`) of the kernel tests;
- training runs: `tiny_config`, `steps_per_epoch`, `random_batch`, `restore_state`,
  `restore_params`, and `main_flags` (a config as main.py's command line).
"""
import jax
import numpy as np

from configs import demo
from mnv3_jax.data import input_pipeline
from mnv3_jax.model import blocks
from mnv3_jax.parallel import sharding
from mnv3_jax.train import checkpointing
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
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


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
