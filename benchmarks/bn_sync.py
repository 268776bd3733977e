r"""Global vs per-device BatchNorm statistics: train-step time on 8 fake CPU devices, and the
all-reduce traffic of each variant (counted in the compiled program and from the model).

  nice -n 15 .venv/bin/python benchmarks/bn_sync.py [--variant=small] [--width=1.0] [--res=96]
      [--batch=64] [--steps=10] [--depthwise=shifted]

For each of config.bn_stats = 'global' and 'per_device': compile time, median step time over
`steps` timed steps (after 2 warm-up steps), and the collectives of the optimized HLO (count and
bytes per kind). From the model, with P trainable parameters and L BatchNorm layers of C channels
in all: both variants all-reduce 4P bytes of float32 gradients plus 2C floats of BatchNorm
statistics per step. Global BN all-reduces each layer's two moments in the forward pass and, in the
backward pass, their gradients, whose sums are also the BN scale and bias gradients (so the gradient
all-reduce does not carry those): 2L + 1 collectives. Per-device BN averages its new running
statistics together with the gradients: 1 collective. Prints a Markdown table (docs/MULTIHOST.md
holds a run of it).
"""
import os
import re
import statistics
import sys
import time

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8')

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import default
from mnv3_jax.parallel import sharding
from mnv3_jax.train import steps
from mnv3_jax.train import trainer
from mnv3_jax.model import MobileNetV3

flags.DEFINE_string('variant', 'small', 'large or small')
flags.DEFINE_float('width', 1.0, 'Width multiplier.')
flags.DEFINE_integer('res', 96, 'Image side, pixels.')
flags.DEFINE_integer('batch', 64, 'Global batch (8 per device at 64).')
flags.DEFINE_integer('steps', 10, 'Timed steps per variant.')
flags.DEFINE_string('depthwise', 'shifted', 'model.depthwise_impl (auto = native on CPU).')
FLAGS = flags.FLAGS

_SHAPE = re.compile(r'(pred|s32|u32|f32|bf16|f16)\[([\d,]*)\]')
_BYTES = {'pred': 1, 's32': 4, 'u32': 4, 'f32': 4, 'bf16': 2, 'f16': 2}


_COLLECTIVE = re.compile(r'= (.*?) (all-reduce|all-gather|reduce-scatter|collective-permute|'
                         r'all-to-all)(-start)?\(')


def collectives(hlo_text: str) -> dict:
  """{op: (count, bytes)} of the collectives of an optimized HLO module (result shapes summed)."""
  out = {}
  for line in hlo_text.splitlines():
    match = _COLLECTIVE.search(line)
    if not match:
      continue
    nbytes = sum(_BYTES[dtype] * int(np.prod([int(d) for d in dims.split(',') if d]))
                 for dtype, dims in _SHAPE.findall(match.group(1)))
    count, total = out.get(match.group(2), (0, 0))
    out[match.group(2)] = (count + 1, total + nbytes)
  return out


def bn_channels(params) -> tuple:
  """(BatchNorm layers, their channels C summed) of a MobileNetV3 param tree."""
  layers = [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
            if jax.tree_util.keystr(path).endswith("['bn']['scale']")]
  return len(layers), int(sum(x.size for x in layers))


def measure(config, mesh, batch):
  model = MobileNetV3(**config.model)
  schedule, tx = trainer.build_optimizer(config, steps_per_epoch=1000)
  init_fn, train_fn, _ = steps.jit_steps(model, tx, schedule, config, mesh)
  state = init_fn(jax.random.key(0))
  start = time.perf_counter()
  compiled = train_fn.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  ops = collectives(compiled.as_text())
  times = []
  for i in range(2 + FLAGS.steps):
    start = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    if i >= 2:
      times.append(time.perf_counter() - start)
  return state, compile_s, statistics.median(times), ops


def main(argv):
  del argv
  assert jax.device_count() == 8, jax.devices()
  config = default.get_config(f'variant={FLAGS.variant},width={FLAGS.width},res={FLAGS.res},'
                              f'batch={FLAGS.batch}')
  config.model.depthwise_impl = FLAGS.depthwise
  mesh = sharding.make_mesh()
  rng = np.random.default_rng(0)
  batch = sharding.to_global({
      'image': rng.uniform(-1, 1, (FLAGS.batch, FLAGS.res, FLAGS.res, 3)).astype(np.float32),
      'label': rng.integers(0, 1000, FLAGS.batch).astype(np.int32)}, mesh)
  rows = []
  for mode in steps.BN_STATS:
    config.bn_stats = mode
    state, compile_s, step_s, ops = measure(config, mesh, batch)
    rows.append((mode, compile_s, step_s, ops))
  params = sum(x.size for x in jax.tree.leaves(state.params))
  layers, channels = bn_channels(state.params)
  print(f'\n{FLAGS.variant} {FLAGS.width} at {FLAGS.res}px, global batch {FLAGS.batch} on 8 CPU '
        f'devices ({jax.default_backend()}), depthwise {FLAGS.depthwise}; {params:,} trainable '
        f'params ({4 * params:,} gradient bytes in f32); {layers} BatchNorm layers, C = '
        f'{channels:,} channels.\n')
  print('| bn_stats | compile s | step ms (median) | HLO collectives: ops, bytes | '
        'model: all-reduces, bytes per step |')
  print('|---|---|---|---|---|')
  for mode, compile_s, step_s, ops in rows:
    count = 2 * layers + 1 if mode == 'global' else 1
    hlo = '; '.join(f'{op} {n}, {b:,}' for op, (n, b) in sorted(ops.items()))
    print(f'| {mode} | {compile_s:.1f} | {1000 * step_s:.1f} | {hlo} | {count}, '
          f'{4 * params + 8 * channels:,} (grads {4 * params:,} + BN {8 * channels:,}) |')


if __name__ == '__main__':
  app.run(main)
