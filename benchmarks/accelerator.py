r"""Throughput on an accelerator (or any backend): train step and inference of MobileNetV3 at a
large batch in bfloat16, against the chip's measured matmul and memory ceilings.

  .venv/bin/python benchmarks/accelerator.py [--variants=small,large] [--batch=256]
      [--dtype=bfloat16] [--res=224] [--steps=20] [--matmul=8192] [--copy_mib=1024]

Ceilings, measured here first: dense matmul FLOP/s (--matmul square, --dtype) and copy bandwidth
(read + write of a --copy_mib MiB buffer). Then, per variant, over a 'data' mesh of every local
device (`mnv3_jax.sharding`): the real `steps.train_step` (RMSProp, EMA, metrics) and jitted
inference, median of --steps timed calls after 3 warm-up calls. Achieved FLOP/s counts 2 FLOPs per
multiply-accumulate of `mnv3_jax.model.summary` (forward) and 3x the forward for a train step (forward,
input and weight gradients); the update and the elementwise work are not counted. Prints a
Markdown table (docs/BENCHMARKS.md, "Accelerators", holds the runs there are).

A CPU smoke run: --variants=small --batch=8 --res=96 --dtype=float32 --steps=2 --matmul=512
--copy_mib=64.
"""
import functools
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp
from absl import app, flags

from mnv3_jax import model as model_lib
from mnv3_jax.train import optim
from mnv3_jax.parallel import sharding
from mnv3_jax.train import steps
from mnv3_jax.model import summary

flags.DEFINE_list('variants', ['small', 'large'], 'small and/or large.')
flags.DEFINE_integer('batch', 256, 'Global batch (a multiple of the local device count).')
flags.DEFINE_enum('dtype', 'bfloat16', ['bfloat16', 'float32'], 'Compute dtype.')
flags.DEFINE_integer('res', 224, 'Image side, pixels.')
flags.DEFINE_integer('steps', 20, 'Timed calls per measurement.')
flags.DEFINE_integer('matmul', 8192, 'Side of the square matmul that measures the FLOP/s ceiling.')
flags.DEFINE_integer('copy_mib', 1024, 'MiB copied to measure the memory bandwidth ceiling.')
FLAGS = flags.FLAGS


def median_seconds(fn, steps: int, warmup: int = 3) -> float:
  """Median wall time of `fn()` (which blocks on its result) over `steps` calls."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def ceilings(dtype, side: int, copy_mib: int, steps: int):
  """(matmul FLOP/s, copy bytes/s) on the default device."""
  key = jax.random.key(0)
  a = jax.random.normal(key, (side, side), dtype)
  matmul = jax.jit(lambda a: a @ a)
  flops = 2 * side ** 3 / median_seconds(lambda: matmul(a).block_until_ready(), steps)
  buf = jnp.zeros((copy_mib * 2 ** 20 // 4,), jnp.float32)
  copy = jax.jit(lambda b: b + 1)
  seconds = median_seconds(lambda: copy(buf).block_until_ready(), steps)
  return flops, 2 * buf.nbytes / seconds


def measure(variant: str, mesh, batch: int, res: int, dtype: str, steps_: int):
  """{'train': s/step, 'infer': s/call, 'macs': per image} of one variant."""
  model = model_lib.MobileNetV3(variant=variant, dtype=dtype)
  data = jax.device_put({
      'image': jax.random.uniform(jax.random.key(1), (batch, res, res, 3), minval=-1, maxval=1),
      'label': jnp.arange(batch, dtype=jnp.int32) % 1000}, sharding.batch_sharded(mesh))
  schedule = optim.learning_rate_schedule(
      base_learning_rate=0.016, base_batch_size=4096, batch_size=batch, steps_per_epoch=1000,
      warmup_epochs=5, warmup_init_fraction=0.1, decay_rate=0.97, decay_epochs=2.4)
  tx = optim.create_optimizer(learning_rate=schedule, rmsprop_decay=0.9, momentum=0.9,
                              epsilon=0.002, weight_decay=1e-5)
  init = jax.jit(functools.partial(steps.create_train_state, model, tx, image_size=(res, res)),
                 out_shardings=sharding.replicated(mesh))
  state = [init(jax.random.key(0))]
  train = jax.jit(functools.partial(steps.train_step, model=model, tx=tx, schedule=schedule,
                                    label_smoothing=0.1, ema_decay=0.9999, seed=0),
                  donate_argnums=0)

  def train_call():
    state[0], metrics = train(state[0], data)
    jax.block_until_ready(metrics)

  # Inference first: the train step donates (deletes) the state these variables point into.
  variables = {'params': state[0].params, 'batch_stats': state[0].batch_stats}
  infer = jax.jit(lambda v, x: model.apply(v, x, train=False))
  infer_s = median_seconds(lambda: infer(variables, data['image']).block_until_ready(), steps_)
  train_s = median_seconds(train_call, steps_)
  return {'infer': infer_s, 'train': train_s,
          'macs': summary.summarize(model, (res, res))['macs']}


def main(_):
  devices = jax.local_devices()
  mesh = sharding.make_mesh(devices)
  sharding.check_batch_size(FLAGS.batch, mesh)
  dtype = jnp.dtype(FLAGS.dtype)
  peak_flops, bandwidth = ceilings(dtype, FLAGS.matmul, FLAGS.copy_mib, FLAGS.steps)
  kind = devices[0].device_kind
  print(f'{len(devices)} x {kind}, jax {jax.__version__}, {FLAGS.dtype}, '
        f'batch {FLAGS.batch}, {FLAGS.res}x{FLAGS.res}')
  print(f'measured ceilings per device: matmul {FLAGS.matmul}^3 {peak_flops / 1e12:.1f} TFLOP/s, '
        f'copy {bandwidth / 1e9:.0f} GB/s\n')
  print('| variant | mode | images/s | ms/step | achieved TFLOP/s | of matmul ceiling |')
  print('|---|---|---|---|---|---|')
  for variant in FLAGS.variants:
    r = measure(variant, mesh, FLAGS.batch, FLAGS.res, FLAGS.dtype, FLAGS.steps)
    for mode, factor in (('train', 3), ('infer', 1)):
      flops = factor * 2 * r['macs'] * FLAGS.batch / r[mode]
      share = flops / (peak_flops * len(devices))
      print(f'| {variant} | {mode} | {FLAGS.batch / r[mode]:.0f} | {1e3 * r[mode]:.1f} | '
            f'{flops / 1e12:.3g} | {100 * share:.1f}% |')


if __name__ == '__main__':
  app.run(main)
