r"""Per-layer table and totals of trainable params, BN statistics and MACs of a MobileNetV3.

The figures come from the real Flax module: `jax.eval_shape` traces `model.init` (no arrays are
allocated, no FLOPs are spent) under `flax.linen.intercept_methods`, which records every leaf
module's call: its path, kind, output shape and own variables.

MAC convention (multiply-accumulates per image, as the paper's "MAdds"):
  - Conv / DepthwiseConv: H_out * W_out * k_h * k_w * C_in * C_out / groups, i.e. the number of
    output elements times the kernel's fan-in, prod(kernel.shape[:-1]).
  - Pointwise / Dense (the 1x1 convs, the SE layers, the head): in * out * the number of positions it is
    applied at (H*W for a 1x1 conv, 1 after pooling).
  - Not counted: BatchNorm, activations, pooling, the SE multiply, residual adds, biases.

Usage:
  python -m mnv3_jax.model.summary --variant large --width 1.0 --resolution 224
  python -m mnv3_jax.model.summary --variant small --resolution 224x160 --no-se --json
A bad option ends in one line on stderr, `error: ...`, with status 2 (MNV3_TRACEBACK=1 adds the
traceback).
"""
import argparse
import json
import math
import sys
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
from flax import linen as nn

from mnv3_jax import cli_errors
from mnv3_jax import defaults
from mnv3_jax.model import activations, options as options_lib
from mnv3_jax.model.mobilenet_v3 import MobileNetV3
from mnv3_jax.model.tables import TABLES
from mnv3_jax.ops import conv, depthwise, pointwise

# Modules whose MACs are output elements x kernel fan-in; every other leaf module counts 0.
MAC_MODULES = (nn.Conv, conv.Conv, nn.Dense, pointwise.Pointwise, depthwise.DepthwiseConv)


def _size(tree) -> int:
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _own(collection: Mapping[str, Any]) -> Dict[str, Any]:
  """The variables a module holds itself (its submodules' are nested mappings)."""
  return {k: v for k, v in collection.items() if not isinstance(v, Mapping)}


def summarize(model: nn.Module, image_size: Tuple[int, int] = (224, 224),
              channels: int = 3) -> Dict[str, Any]:
  """Counts params, BN statistics and MACs of `model` on one (H, W, channels) image.

  Args:
    model: a MobileNetV3 (any Flax module taking `(x, train=False)` works).
    image_size: (H, W) in pixels, each >= 32.
    channels: input channels.

  Returns:
    {'image_size': [H, W], 'params': trainable parameter count, 'bn_stats': count of BN moving
    mean and variance entries, 'macs': multiply-accumulates per image, 'layers': one dict per leaf
    module with variables, in call order: {'path': 'block_3/se/reduce', 'kind': 'Dense',
    'output_shape': [...] (without the batch axis), 'kernel_shape': [...] or None, 'params',
    'bn_stats', 'macs'}}.
  """
  shape = (1, *image_size, channels)
  options_lib.check_input_shape(shape)
  records = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name != '__call__':
      return out
    params = _own(module.variables.get('params', {}))
    stats = _own(module.variables.get('batch_stats', {}))
    if not params and not stats:
      return out
    kernel = params.get('kernel')
    macs = 0
    if isinstance(module, MAC_MODULES) and kernel is not None:
      macs = math.prod(out.shape) * math.prod(kernel.shape[:-1])
    records.append({
        'path': '/'.join(module.path),
        'kind': type(module).__name__,
        'output_shape': list(out.shape[1:]),
        'kernel_shape': None if kernel is None else list(kernel.shape),
        'params': _size(params),
        'bn_stats': _size(stats),
        'macs': macs,
    })
    return out

  with nn.intercept_methods(record):
    variables = jax.eval_shape(
        lambda rng, x: model.init(rng, x, train=False),
        jax.random.key(0), jax.ShapeDtypeStruct(shape, jnp.float32))
  return {
      'image_size': list(image_size),
      'params': _size(variables.get('params', {})),
      'bn_stats': _size(variables.get('batch_stats', {})),
      'macs': sum(r['macs'] for r in records),
      'layers': records,
  }


def format_table(summary: Mapping[str, Any], title: str = '') -> str:
  """Renders `summarize`'s dict as a fixed-width text table with a totals line."""
  rows = [('path', 'kind', 'output shape', 'params', 'MACs')]
  for r in summary['layers']:
    rows.append((r['path'], r['kind'], 'x'.join(map(str, r['output_shape'])),
                 f"{r['params']:,}", f"{r['macs']:,}"))
  widths = [max(len(row[i]) for row in rows) for i in range(5)]
  aligned = ['  '.join([*(c.ljust(n) for c, n in zip(row[:3], widths)),
                        *(c.rjust(n) for c, n in zip(row[3:], widths[3:]))]) for row in rows]
  lines = ([title] if title else []) + [aligned[0], '-' * len(aligned[0])] + aligned[1:]
  lines.append(f"Totals: trainable params {summary['params']:,} | BN statistics "
               f"{summary['bn_stats']:,} | MACs {summary['macs']:,} "
               f"({summary['macs'] / 1e6:.1f}M)")
  return '\n'.join(lines)


def parse_resolution(text: str) -> Tuple[int, int]:
  """'224' -> (224, 224); '224x160' -> (224, 160) as (H, W)."""
  parts = text.lower().split('x')
  if len(parts) not in (1, 2) or not all(p.strip().isdigit() for p in parts):
    raise argparse.ArgumentTypeError(
        f'resolution {text!r} not allowed: give one integer (224) or HxW (224x160).')
  h, w = (int(parts[0]),) * 2 if len(parts) == 1 else map(int, parts)
  if min(h, w) < 32:
    raise argparse.ArgumentTypeError(f'resolution {text!r} not allowed: each side must be >= 32.')
  return h, w


def build_parser() -> argparse.ArgumentParser:
  """The command-line options: the model options that change its size, plus output switches."""
  p = cli_errors.ArgumentParser(prog='python -m mnv3_jax.model.summary',
                               description=__doc__.split('\n')[0])
  d = defaults.MODEL
  p.add_argument('--variant', default=d['variant'], choices=sorted(TABLES))
  p.add_argument('--width', type=float, default=d['width'], help='width multiplier, > 0')
  p.add_argument('--minimalistic', action='store_true', help='3x3 kernels, ReLU, no SE')
  p.add_argument('--resolution', type=parse_resolution, default=(224, 224),
                 help='input size: 224 or HxW like 224x160 (each >= 32)')
  p.add_argument('--num_classes', type=int, default=d['num_classes'])
  p.add_argument('--activation', default=d['activation'], choices=sorted(activations.ACTIVATIONS))
  p.add_argument('--se', action=argparse.BooleanOptionalAction, default=d['se'],
                 help='squeeze-and-excite on (--se) or off (--no-se)')
  p.add_argument('--se_gate', default=d['se_gate'], choices=sorted(activations.GATES))
  p.add_argument('--stem_filters', type=int, default=d['stem_filters'])
  p.add_argument('--last_stage', default=d['last_stage'], choices=list(options_lib.LAST_STAGES))
  p.add_argument('--json', action='store_true', help='print one JSON object instead of a table')
  return p


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  options = dict(variant=args.variant, width=args.width, minimalistic=args.minimalistic,
                 num_classes=args.num_classes, activation=args.activation, se=args.se,
                 se_gate=args.se_gate, stem_filters=args.stem_filters,
                 last_stage=args.last_stage)
  try:
    summary = summarize(MobileNetV3(**options), args.resolution)
  except ValueError as e:
    parser.error(str(e))
  if args.json:
    print(json.dumps({'options': options, **summary}))
  else:
    h, w = args.resolution
    title = ', '.join(f'{k}={v}' for k, v in options.items()) + f' at {h}x{w}'
    print(format_table(summary, title))
  return 0


def cli():
  """The console entry point: a user error ends in one line (mnv3_jax/cli_errors.py)."""
  sys.exit(cli_errors.one_line_errors(main)())


if __name__ == '__main__':
  cli()
