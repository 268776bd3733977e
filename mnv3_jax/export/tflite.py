r"""Exports trained weights to a TF SavedModel and TFLite: float32, and int8 (post-training, or
with the trained ranges of a quantization-aware run: `qat_graph`).

  python -m mnv3_jax.export --workdir=/tmp/mnv3_demo --out=/tmp/mnv3_demo_export --int8
  python -m mnv3_jax.export --checkpoint=/tmp/tv_large --out=/tmp/tv_large_export \
      --config=configs/large.py --config.data.data_dir=DIR --int8

Path: `jax2tf.convert` (jax 0.10 keeps only its native serialization: the Flax forward becomes one
StableHLO `XlaCallModule` op with the weights as constants) -> SavedModel -> the TFLite converter,
which legalizes StableHLO into TFLite builtin ops (CONV_2D, DEPTHWISE_CONV_2D, HARD_SWISH, ...);
int8 quantization then needs only a representative dataset: `--calibration_images` training
images from `input_pipeline.train_iterator` (the run's own data config for a workdir, `--config`'s
for a checkpoint). The depthwise convs are exported as grouped convolutions (depthwise_impl
'conv'), whatever the training used: the weights are the same.

The exported models take float32 NHWC RGB images in [-1, 1] (x / 127.5 - 1 of uint8 pixels) of
the fixed size (batch_size, S, S, 3) and return float32 logits (batch_size, classes); the int8
model quantizes and dequantizes inside. `out/export.json` records the source, shapes, file sizes,
the data config, and the float32 TFLite model's largest logit difference from Flax, which must be
finite and <= FLOAT_TOLERANCE (checked before the int8 conversion; non-finite weights are refused
before anything runs). `out` must be new or an empty directory; the export is written beside it and
renamed to `out` when complete, so a failed or interrupted export leaves no `out` (`staging`).
"""
import json
import os
from typing import Any, Callable, Dict, Iterator, Optional

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging
from flax import linen as nn
from flax import traverse_util
from jax import lax
from ml_collections import config_flags

from mnv3_jax import cli_errors
from mnv3_jax.data import input_pipeline
from mnv3_jax.compress import qat_model
from mnv3_jax.export import qat_graph, staging
from mnv3_jax.ops import pointwise
from mnv3_jax.interop import pretrained
from mnv3_jax import console
from mnv3_jax import model as model_lib

FLOAT_FILE, INT8_FILE, SAVED_MODEL, INFO_FILE = (
    'model_float32.tflite', 'model_int8.tflite', 'saved_model', 'export.json')
INPUT_DOC = 'float32 (N, S, S, 3) RGB in [-1, 1] (uint8 pixels / 127.5 - 1)'
_PARITY_IMAGES = 4
# Largest allowed max|TFLite - Flax| / max|Flax| of the float32 model's logits (1e-6 measured).
FLOAT_TOLERANCE = 1e-4


def export_model(model: model_lib.MobileNetV3) -> model_lib.MobileNetV3:
  """`model` as exported: float32, inference, grouped-conv depthwise (no custom calls)."""
  return model.clone(depthwise_impl='conv', dtype='float32')


def _matmuls_as_1x1_convs(next_fun, args, kwargs, context):
  """A flax method interceptor: Dense and Pointwise layers on NHWC inputs become 1x1 convs.

  The TFLite converter (TF 2.21) cannot legalize a matmul over an (1, 1, 1, C) input, which the
  SE layers see at batch 1 (and the last stage at 32x32 inputs): "'tfl.batch_matmul' op found
  invalid output rank, expected 3 but got 4", with or without reshapes around it. As a 1x1
  convolution it becomes TFLite's CONV_2D, what Keras models export to.
  """
  module, x = context.module, args[0] if args else None
  if (context.method_name != '__call__' or getattr(x, 'ndim', 0) != 4
      or not isinstance(module, (nn.Dense, pointwise.Pointwise))):
    return next_fun(*args, **kwargs)
  kernel = module.get_variable('params', 'kernel').astype(x.dtype)
  y = lax.conv_general_dilated(x, kernel[None, None], (1, 1), 'VALID',
                               dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  if getattr(module, 'use_bias', False):
    y = y + module.get_variable('params', 'bias').astype(x.dtype)
  return y


def exported_forward(model: model_lib.MobileNetV3, variables: Dict[str, Any]):
  """The function that is exported: images (N, S, S, 3) in [-1, 1] -> float32 logits."""
  model = export_model(model)

  def forward(images):
    with nn.intercept_methods(_matmuls_as_1x1_convs):
      return model.apply(variables, images, train=False)
  return forward


def to_saved_model(model: model_lib.MobileNetV3, variables: Dict[str, Any], path: str,
                   image_size: int, batch_size: int = 1) -> None:
  """Writes a SavedModel whose 'serving_default' maps 'images' to 'logits' (see INPUT_DOC)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top
  model_lib.check_input_shape((batch_size, image_size, image_size, 3))
  forward = jax2tf.convert(exported_forward(model, jax.tree.map(np.asarray, variables)),
                           native_serialization_platforms=('cpu',), with_gradient=False)
  module = tf.Module()
  module.serve = tf.function(
      lambda images: {'logits': forward(images)}, autograph=False,
      input_signature=[tf.TensorSpec((batch_size, image_size, image_size, 3), tf.float32,
                                     name='images')])
  tf.saved_model.save(module, path, signatures={'serving_default': module.serve})


def to_tflite(saved_model: str, representative: Optional[Callable[[], Iterator]] = None) -> bytes:
  """The TFLite flatbuffer of a SavedModel: float32, or int8 when `representative` is given.

  representative: a callable returning an iterator of [images] lists of the model's input shape;
  weights and activations become int8 (TFLITE_BUILTINS_INT8 only), inputs and outputs stay float32.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
  if representative is not None:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
  return converter.convert()


def calibration_data(data_config, num_images: int, batch_size: int, seed: int = 0):
  """A representative dataset: `num_images` augmented training images in batches of batch_size."""
  _check_calibration(num_images, batch_size)

  def generate():
    batches = input_pipeline.train_iterator(data_config, global_batch_size=batch_size, seed=seed,
                                            start_step=0, process_index=0, process_count=1)
    for _ in range(num_images // batch_size):
      yield [next(batches)['image']]
  return generate


def _check_calibration(num_images: int, batch_size: int) -> None:
  if num_images < batch_size:
    raise ValueError(f'calibration_images={num_images} must be >= batch_size={batch_size}.')


def check_finite(variables: Dict[str, Any], source: str) -> None:
  """Raises ValueError naming the arrays of `variables` that hold NaN or infinite values."""
  bad = [f'{name}: {np.isnan(a).sum()} NaN, {np.isinf(a).sum()} inf of {a.size}'
         for name, a in traverse_util.flatten_dict(variables, sep='/').items()
         if not np.isfinite(a).all()]
  if bad:
    raise ValueError(f'The weights of {source} are not finite ({len(bad)} arrays, e.g. '
                     f'{"; ".join(bad[:3])}): a damaged checkpoint? Nothing exported.')


def relative_diff(out: np.ndarray, ref: np.ndarray) -> float:
  """max|out - ref| / max|ref|: NaN when either holds NaN or both the same infinity."""
  with np.errstate(invalid='ignore', over='ignore'):
    return float(np.abs(out - ref).max()
                 / np.maximum(np.abs(ref).max(), np.finfo(np.float32).tiny))


def check_float32(path: str, model: model_lib.MobileNetV3, variables: Dict[str, Any],
                  source: str) -> float:
  """max|TFLite - Flax| / max|Flax| of the float32 model at `path` on random inputs; raises
  ValueError naming both and the tolerance unless it is finite and <= FLOAT_TOLERANCE."""
  from mnv3_jax.export import benchmark  # pylint: disable=g-import-not-at-top
  interp = benchmark.interpreter(path)
  shape = interp.get_input_details()[0]['shape']
  x = np.random.default_rng(0).uniform(-1, 1, (max(_PARITY_IMAGES // shape[0], 1) * shape[0],
                                                *shape[1:])).astype(np.float32)
  reference = model.clone(dtype='float32')
  flax_logits = np.asarray(jax.jit(lambda v, x: reference.apply(v, x, train=False))(variables, x))
  diff = relative_diff(benchmark.predict(interp, x), flax_logits)
  if not diff <= FLOAT_TOLERANCE:   # NaN fails too
    why = ('' if np.isfinite(flax_logits).all() else ' Flax\'s own logits are not finite: the '
           'weights overflow, or a BatchNorm variance is negative.')
    raise ValueError(f'Export of {source} failed its float32 check: {os.path.basename(path)}\'s '
                     f'logits differ from Flax\'s by {diff:.3g} (max relative; allowed: finite '
                     f'and <= {FLOAT_TOLERANCE:g}).{why} Nothing exported.')
  return diff


def export(model: model_lib.MobileNetV3, variables: Dict[str, Any], out: str, *,
           image_size: int, batch_size: int = 1, data_config=None, int8: bool = False,
           calibration_images: int = 200, source: str = '') -> Dict[str, Any]:
  """Writes out/saved_model, out/model_float32.tflite [, out/model_int8.tflite], out/export.json.

  All or nothing (`staging`): `out` must be new or empty and appears only when the export is
  complete. Raises ValueError, before any compute, on bad arguments or non-finite weights, and
  after the float32 conversion when its logits are not within FLOAT_TOLERANCE of Flax's.
  data_config: the input pipeline's config (needed for int8: calibration images of size
  `image_size`); recorded for `benchmark_tflite`. Returns the export.json content.

  When `variables` hold a quantization-aware trained run's ranges ('quant_stats'), the int8 model
  is the QAT network with those ranges (`qat_graph`), not a calibration: what was trained ships.
  """
  staging.check_out(out)
  name = source or 'the export source'
  ranges = variables.get('quant_stats')
  variables = {k: variables[k] for k in ('params', 'batch_stats')}
  if int8 and data_config is None and ranges is None:
    raise ValueError('int8 export needs a data config for its calibration images (--config).')
  if int8 and ranges is None:
    _check_calibration(calibration_images, batch_size)
  model_lib.check_input_shape((batch_size, image_size, image_size, 3))
  pretrained.check_fits(jax.tree.map(np.shape, variables), model, name)
  check_finite(variables, name)
  with staging.staged(out) as tmp:
    saved_model = os.path.join(tmp, SAVED_MODEL)
    to_saved_model(model, variables, saved_model, image_size, batch_size)
    files = {'float32': os.path.join(tmp, FLOAT_FILE)}
    with open(files['float32'], 'wb') as f:
      f.write(to_tflite(saved_model))
    diff = check_float32(files['float32'], model, variables, name)
    if int8:
      files['int8'] = os.path.join(tmp, INT8_FILE)
      with open(files['int8'], 'wb') as f:
        f.write(_int8(model, variables, ranges, saved_model, data_config, image_size, batch_size,
                      calibration_images))
    info = {
        'source': source, 'model': pretrained.model_options(export_model(model)),
        'input': INPUT_DOC.replace('N', str(batch_size)).replace('S', str(image_size)),
        'image_size': image_size, 'batch_size': batch_size,
        'files': {k: os.path.basename(v) for k, v in files.items()},
        'bytes': {k: os.path.getsize(v) for k, v in files.items()},
        'float32_max_rel_diff_vs_flax': diff,
        'int8_ranges': None if not int8 else (
            'trained (quantization-aware)' if ranges is not None
            else f'calibrated on {calibration_images} training images'),
        'data': None if data_config is None else ml_collections.ConfigDict(data_config).to_dict(),
    }
    with open(os.path.join(tmp, INFO_FILE), 'w') as f:
      json.dump(info, f, indent=2, default=str)
  logging.info('Exported %s to %s: %s', source, out, info['bytes'])
  return info

def _int8(model, variables, ranges, saved_model: str, data_config, image_size: int,
          batch_size: int, calibration_images: int) -> bytes:
  """The int8 flatbuffer: the QAT network with its trained `ranges`, or post-training quantized
  with ranges calibrated on training images (`ranges` None)."""
  if ranges is not None:
    qat = qat_model.QATMobileNetV3.from_model(export_model(model))
    return qat_graph.to_tflite(qat, {**variables, 'quant_stats': ranges}, image_size, batch_size)
  data_config = ml_collections.ConfigDict(data_config).copy_and_resolve_references()
  data_config.image_size = image_size
  return to_tflite(saved_model, calibration_data(data_config, calibration_images, batch_size))


FLAGS = flags.FLAGS


def _define_flags():
  """Defines the command line (only when run as a program: importing defines no flags)."""
  flags.DEFINE_string('workdir', None, 'A training workdir: its best (else latest) checkpoint.')
  flags.DEFINE_string('checkpoint', None, 'A variables checkpoint (python -m '
                      'mnv3_jax.interop.import_weights) or one step directory of a workdir.')
  flags.DEFINE_string('out', None, 'New directory for the SavedModel, the .tflite files and '
                      'export.json.')
  flags.DEFINE_enum('weights', 'ema', pretrained.WEIGHTS, 'Which weights of a training checkpoint.')
  flags.DEFINE_bool('int8', False, 'Also write the int8 model: with the trained ranges of a '
                    'quantization-aware (config.quant=qat) run, else post-training quantized.')
  flags.DEFINE_integer('image_size', 0, 'Input side S; 0: the data config\'s image_size.')
  flags.DEFINE_integer('batch_size', 1, 'Fixed batch size of the exported models.')
  flags.DEFINE_integer('calibration_images', 200, 'Training images for int8 calibration.')
  flags.DEFINE_bool('library_logs', False, 'Also print the INFO logging of orbax, TFDS, absl and '
                    'TensorFlow\'s start-up (hidden by default; warnings and errors always show).')
  config_flags.DEFINE_config_file('config', None, 'Data config for --checkpoint (configs/*.py); '
                                  'overrides the workdir\'s config.json.', lock_config=False)


def _quiet_tensorflow() -> None:
  """Hides the INFO lines of TensorFlow's SavedModel writer (its C++ ones: `mnv3_jax.export`)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.get_logger().setLevel('WARNING')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not FLAGS.library_logs:
    console.quiet_libraries()
    _quiet_tensorflow()
  if (FLAGS.workdir is None) == (FLAGS.checkpoint is None):
    raise app.UsageError('Pass exactly one of --workdir and --checkpoint.')
  staging.check_out(FLAGS.out)
  source = FLAGS.workdir or FLAGS.checkpoint
  task = pretrained.task_of(source)
  if task != 'classification':
    raise app.UsageError(f"{source} is a {task!r} run; the exporter writes classifiers (task "
                         "'classification') only.")
  variables, options, data = pretrained.load(source, FLAGS.weights)
  if FLAGS.config is not None:
    data = FLAGS.config.data
  options = {**options, 'dtype': 'float32'}
  image_size = FLAGS.image_size or (data['image_size'] if data is not None else 0)
  if not image_size:
    raise app.UsageError('Pass --image_size or --config (its data.image_size).')
  info = export(model_lib.MobileNetV3(**options), variables, FLAGS.out, image_size=image_size,
                batch_size=FLAGS.batch_size, data_config=data, int8=FLAGS.int8,
                calibration_images=FLAGS.calibration_images, source=source)
  print(json.dumps({k: info[k] for k in ('files', 'bytes', 'float32_max_rel_diff_vs_flax')}))


def cli():
  """The console entry point."""
  _define_flags()
  cli_errors.run(main)


if __name__ == '__main__':
  cli()
