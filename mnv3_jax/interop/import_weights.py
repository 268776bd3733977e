r"""Converts published MobileNetV3 weights into a variables checkpoint for training and export.

  python -m mnv3_jax.interop.import_weights --source=mobilenet_v3_large-8738ca79.pth --format=torchvision \
      --variant=large --out=/tmp/tv_large
  python -m mnv3_jax.interop.import_weights --source=model.safetensors --format=timm_tf --variant=small \
      --width=0.75 --out=/tmp/timm_small_075
  python main.py --config=configs/large.py --workdir=DIR --config.init_from=/tmp/tv_large \
      --config.model.padding=symmetric          # the options this tool prints

Formats: torchvision, timm, timm_tf (see mnv3_jax/interop/torch_weights.py) and keras (.keras, .h5,
.weights.h5; mnv3_jax/interop/keras_weights.py). Nothing is downloaded: pass a file you have.
A user error ends in one line on stderr, `error: ...`, with status 2; MNV3_TRACEBACK=1 (or -v 1)
also prints its traceback (mnv3_jax/cli_errors.py).
"""
from absl import app, flags
from etils import epath

from mnv3_jax import cli_errors, console
from mnv3_jax.interop import keras_weights
from mnv3_jax.interop import torch_weights
from mnv3_jax.interop import pretrained
from mnv3_jax import model as model_lib

FORMATS = (*torch_weights.FORMATS, 'keras')
_KERAS_OPTIONS = dict(padding='same', bn_epsilon=1e-3)
# The inputs each format's published weights were trained on (timm's own checkpoints mostly use
# ImageNet mean/std; pass input_norm for one that does not).
DEFAULT_INPUT_NORM = {'torchvision': 'imagenet', 'timm': 'imagenet', 'timm_tf': 'none',
                      'keras': 'none'}


def check_out(out: str) -> None:
  """Raises ValueError unless `out` is a new or empty directory (checked before any reading)."""
  path = epath.Path(out)
  if path.exists() and not path.is_dir():
    raise ValueError(f'Invalid out {out!r}: it is a file; allowed: a new or empty directory.')
  if path.exists() and any(path.iterdir()):
    raise ValueError(f'Invalid out {out!r}: it exists and is not empty; allowed: a new or empty '
                     'directory.')


def import_weights(source: str, fmt: str, out: str, key: str = None, **model_options):
  """Converts `source` (a file of format `fmt`) for MobileNetV3(**model_options) into `out`.

  The format's padding and BN epsilon are added to `model_options`, and its input normalization
  unless `model_options` has input_norm. Returns the model.
  """
  if fmt not in FORMATS:
    raise ValueError(f'Unknown format {fmt!r}; allowed: {list(FORMATS)}.')
  check_out(out)
  model_options.setdefault('input_norm', DEFAULT_INPUT_NORM[fmt])
  if fmt == 'keras':
    model = model_lib.MobileNetV3(**model_options, **_KERAS_OPTIONS)
    variables = keras_weights.from_keras(source, model)
  else:
    model = model_lib.MobileNetV3(**model_options, **torch_weights.required_options(fmt))
    variables = torch_weights.from_torch(torch_weights.load_state_dict(source, key), model, fmt)
  pretrained.save(out, variables, model)
  return model


FLAGS = flags.FLAGS


def _define_flags():
  """Defines the command line (only when run as a program: importing defines no flags)."""
  flags.DEFINE_string('source', None,
                      'The weights file (.pth, .pt, .bin, .safetensors, .keras, .h5).')
  flags.DEFINE_enum('format', None, FORMATS, 'Where the weights come from.')
  flags.DEFINE_enum('variant', None, tuple(model_lib.TABLES), 'MobileNetV3 variant of the weights.')
  flags.DEFINE_float('width', 1.0, 'Width multiplier of the weights.')
  flags.DEFINE_bool('minimalistic', False, 'Minimalistic model (timm_tf *_minimal_100, keras).')
  flags.DEFINE_integer('num_classes', 1000, 'Classes of the weights\' classifier.')
  flags.DEFINE_enum('input_norm', None, model_lib.INPUT_NORMS,
                    'Input normalization the weights were trained with; default: the format\'s '
                    f'({DEFAULT_INPUT_NORM}).')
  flags.DEFINE_string('key', None, 'Entry of a training checkpoint that holds the state dict '
                      '(e.g. state_dict_ema); default: the file itself, or state_dict / model.')
  flags.DEFINE_string('out', None, 'New directory for the variables checkpoint.')
  flags.mark_flags_as_required(['source', 'format', 'variant', 'out'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if FLAGS.format == 'keras':
    console.import_tensorflow_quietly()   # Keras' TensorFlow, without its C++ start-up lines
  model = import_weights(FLAGS.source, FLAGS.format, FLAGS.out, FLAGS.key, variant=FLAGS.variant,
                         width=FLAGS.width, minimalistic=FLAGS.minimalistic,
                         num_classes=FLAGS.num_classes,
                         **({'input_norm': FLAGS.input_norm} if FLAGS.input_norm else {}))
  options, defaults = pretrained.model_options(model), model_lib.MobileNetV3()
  # The config's model options that must match the weights (those not at their defaults).
  flags_line = ' '.join(f'--config.model.{k}={options[k]}' for k in pretrained.COMPUTE_OPTIONS
                        if k in ('variant', 'num_classes') or options[k] != getattr(defaults, k))
  print(f'Wrote {FLAGS.out}. Train or fine-tune from it with\n  --config.init_from={FLAGS.out} '
        f'{flags_line}\nExport it with\n  python -m mnv3_jax.export --checkpoint={FLAGS.out} '
        '--config=CONFIG --out=DIR [--int8]')


def cli():
  """The console entry point."""
  _define_flags()
  cli_errors.run(main)


if __name__ == '__main__':
  cli()
