r"""Batch-1 latency and eval top-1 of exported TFLite models (float32 vs int8).

  python -m mnv3_jax.export.benchmark --export_dir=/tmp/mnv3_demo_export
  python -m mnv3_jax.export.benchmark --export_dir=DIR --threads=4 --runs=200 \
      --config=configs/large.py --config.data.data_dir=DIR     # data other than the export's

Runs each model of `export.json` in the TFLite interpreter (`ai_edge_litert` if installed, else
`tf.lite.Interpreter`): latency is the median (and 90th percentile) wall time of `invoke()` on one
random input after warm-up, on `--threads` CPU threads of this machine (a phone differs: use the
TFLite benchmark_model tool there); top-1 is over the whole eval split of the export's data config
(`input_pipeline.eval_iterator`, padding excluded). Prints a JSON line per model.
"""
import json
import os
import time
from typing import Dict, Optional

import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from mnv3_jax import cli_errors
from mnv3_jax.data import input_pipeline
from mnv3_jax import console

_WARMUP = 10


def interpreter(path: str, threads: Optional[int] = None):
  """An allocated TFLite interpreter of the .tflite file at `path`."""
  try:
    from ai_edge_litert.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
  except ImportError:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    Interpreter = tf.lite.Interpreter  # pylint: disable=invalid-name
  interp = Interpreter(model_path=path, num_threads=threads)
  interp.allocate_tensors()
  return interp


def predict(model, images: np.ndarray, threads: Optional[int] = None) -> np.ndarray:
  """float32 logits (N, classes) of images (N, S, S, 3); N a multiple of the model's batch size.

  model: a .tflite path or an `interpreter`.
  """
  interp = interpreter(model, threads) if isinstance(model, (str, os.PathLike)) else model
  inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
  batch = inp['shape'][0]
  if images.shape[1:] != tuple(inp['shape'][1:]) or len(images) % batch:
    raise ValueError(f'images of shape {images.shape} do not fit the model\'s input '
                     f'{tuple(inp["shape"])} (N must be a multiple of {batch}).')
  logits = []
  for start in range(0, len(images), batch):
    interp.set_tensor(inp['index'], images[start:start + batch].astype(inp['dtype']))
    interp.invoke()
    logits.append(interp.get_tensor(out['index']).copy())
  return np.concatenate(logits).astype(np.float32)


def latency_ms(path: str, runs: int, threads: Optional[int] = 1) -> Dict[str, float]:
  """{'median_ms', 'p90_ms'} of `invoke()` on one random input in [-1, 1]."""
  if runs < 1:
    raise ValueError(f'runs={runs} must be >= 1.')
  interp = interpreter(path, threads)
  inp = interp.get_input_details()[0]
  x = np.random.default_rng(0).uniform(-1, 1, inp['shape']).astype(inp['dtype'])
  interp.set_tensor(inp['index'], x)
  times = []
  for i in range(_WARMUP + runs):
    start = time.perf_counter()
    interp.invoke()
    if i >= _WARMUP:
      times.append((time.perf_counter() - start) * 1e3)
  return {'median_ms': float(np.median(times)), 'p90_ms': float(np.percentile(times, 90))}


def top1(path: str, data_config) -> Dict[str, float]:
  """{'top1', 'count'} of the model at `path` over the eval split of `data_config`."""
  interp = interpreter(path)
  batch_size = interp.get_input_details()[0]['shape'][0]
  correct = count = 0
  for batch in input_pipeline.eval_iterator(data_config, global_batch_size=batch_size * 50,
                                            process_index=0, process_count=1):
    predicted = predict(interp, batch['image']).argmax(-1)
    real = batch['mask'] > 0
    correct += int(np.sum((predicted == batch['label'])[real]))
    count += int(real.sum())
  return {'top1': correct / max(count, 1), 'count': count}


def benchmark(export_dir: str, *, runs: int = 100, threads: int = 1, data_config=None,
              measure_top1: bool = True) -> Dict[str, Dict[str, float]]:
  """{precision: {'bytes', 'median_ms', 'p90_ms'[, 'top1', 'count']}} of each exported model."""
  with open(os.path.join(export_dir, 'export.json')) as f:
    info = json.load(f)
  if measure_top1:
    data_config = ml_collections.ConfigDict(data_config or info['data'])
    data_config.image_size = info['image_size']
  results = {}
  for precision, name in info['files'].items():
    path = os.path.join(export_dir, name)
    results[precision] = {'bytes': os.path.getsize(path), **latency_ms(path, runs, threads)}
    if measure_top1:
      results[precision].update(top1(path, data_config))
  return results

FLAGS = flags.FLAGS


def _define_flags():
  """Defines the command line (only when run as a program: importing defines no flags)."""
  flags.DEFINE_string('export_dir', None, 'Output directory of python -m mnv3_jax.export.')
  flags.DEFINE_integer('threads', 1, 'Interpreter CPU threads.')
  flags.DEFINE_integer('runs', 100, 'Timed invocations per model (after 10 warm-up ones).')
  flags.DEFINE_bool('top1', True, 'Also measure top-1 on the eval split.')
  flags.DEFINE_bool('library_logs', False, 'Also print the INFO logging of orbax, TFDS, absl and '
                    'TensorFlow\'s start-up (hidden by default; warnings and errors always show).')
  config_flags.DEFINE_config_file('config', None, 'Data config (configs/*.py) instead of the '
                                  'export\'s.', lock_config=False)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not FLAGS.library_logs:
    console.quiet_libraries()
  results = benchmark(FLAGS.export_dir, runs=FLAGS.runs, threads=FLAGS.threads,
                      data_config=FLAGS.config.data if FLAGS.config else None,
                      measure_top1=FLAGS.top1)
  for precision, r in results.items():
    print(json.dumps({'model': precision, 'threads': FLAGS.threads, **r}))


def cli():
  """The console entry point."""
  _define_flags()
  cli_errors.run(main)


if __name__ == '__main__':
  cli()
