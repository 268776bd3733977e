r"""What the native CPU kernels buy at inference, measured alternating in one process.

  .venv/bin/python benchmarks/inference_ablation.py [--batch=32] [--rounds=5] [--steps=10]

Times (median ms per call over `rounds` x `steps` calls, the two sides alternating every round):
- the stem alone, (batch, 224, 224, 3) -> 16 channels, 3x3 stride 2, BatchNorm and h-swish:
  `ops.fused.fused_conv` with the native kernel against `lax.conv` followed by the same ops in XLA;
- MobileNetV3 Small and Large inference at 224: the fused inference pass with the native kernels
  (`fused.fused_apply(native=True)`, what evaluation runs on CPU) against the canonical module with
  `depthwise_impl='shifted'` (pure XLA: the same network with no custom calls).
Prints a Markdown table (docs/BENCHMARKS.md quotes a run of it).
"""
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from mnv3_jax import runtime

runtime.use_tcmalloc()   # as main.py: re-executes with tcmalloc preloaded when installed

import jax
import jax.numpy as jnp
from absl import app, flags

from mnv3_jax.ops import fused as fused_ops
from mnv3_jax.model import activations, blocks, fused
from mnv3_jax import model as model_lib

flags.DEFINE_integer('batch', 32, 'Images per call.')
flags.DEFINE_integer('rounds', 5, 'Alternations of the two sides.')
flags.DEFINE_integer('steps', 10, 'Timed calls per side and round (after 2 warm-up calls).')
FLAGS = flags.FLAGS


def _stem(native: bool):
  pads = blocks.spatial_padding((1, 224, 224, 3), 3, 2, 'same')
  post_scale, post_shift = jnp.full((16,), 0.5), jnp.full((16,), 0.1)
  return jax.jit(lambda x, w: fused_ops.fused_conv(
      x, w, 2, pads, native, (post_scale, post_shift, activations.hard_swish)))


def _network(variant: str, native: bool):
  model = model_lib.MobileNetV3(variant=variant, depthwise_impl='shifted')
  if native:
    return jax.jit(lambda v, x: fused.fused_apply(model, v, x, native=True)), model
  return jax.jit(lambda v, x: model.apply(v, x, train=False)), model


def _time(fn, args, steps: int):
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return times


def compare(name: str, sides, rounds: int, steps: int) -> str:
  """sides: [(label, fn, args)] * 2. Returns a Markdown row: medians (ms) and their ratio."""
  for _, fn, args in sides:
    for _ in range(2):
      jax.block_until_ready(fn(*args))
  times = {label: [] for label, _, _ in sides}
  for r in range(rounds):
    for label, fn, args in sides[r % 2:] + sides[:r % 2]:
      times[label] += _time(fn, args, steps)
  (a, _, _), (b, _, _) = sides
  ma, mb = (1e3 * statistics.median(times[k]) for k in (a, b))
  return f'| {name} | {a}: {ma:.1f} | {b}: {mb:.1f} | {mb / ma:.2f}x |'


def main(_):
  key = jax.random.key(0)
  x = jax.random.uniform(key, (FLAGS.batch, 224, 224, 3), minval=-1, maxval=1)
  rows = ['| what (batch %d) | native, ms | XLA, ms | speed-up |' % FLAGS.batch,
          '|---|---|---|---|']
  w = jax.random.normal(key, (3, 3, 3, 16)) * 0.2
  rows.append(compare('stem conv + BN + h-swish', [
      ('native', _stem(True), (x, w)), ('lax.conv', _stem(False), (x, w))],
      FLAGS.rounds, FLAGS.steps))
  for variant in ('small', 'large'):
    sides = []
    for label, native in (('native', True), ('XLA', False)):
      apply, model = _network(variant, native)
      variables = model_lib.init_variables(model, key, (224, 224))
      sides.append((label, apply, (variables, x)))
    rows.append(compare(f'{variant} inference', sides, FLAGS.rounds, FLAGS.steps))
  print(f'jax {jax.__version__}, {os.cpu_count()} CPUs')
  print('\n'.join(rows))


if __name__ == '__main__':
  app.run(main)
