"""configs/*.py: light to import, the defaults written once (mnv3_jax/defaults.py), and every
command-line form the README shows parses to the config it names."""
import pathlib
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from configs import default, demo, large, small
from mnv3_jax import defaults

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG_FILES = sorted(p.stem for p in (ROOT / 'configs').glob('*.py') if p.stem != '__init__')


def test_config_files_import_neither_jax_nor_tensorflow():
  """Each configs/*.py, imported and built in a fresh interpreter, loads no jax, no TensorFlow and
  no project module but mnv3_jax.defaults."""
  script = '''
import importlib, sys
for name in sys.argv[1:]:
  module = importlib.import_module('configs.' + name)
  module.get_config()
  if name in ('small', 'large'):
    module.get_config('demo,width=0.5')
heavy = sorted({m.split('.')[0] for m in sys.modules} & {'jax', 'jaxlib', 'tensorflow', 'flax'})
ours = sorted(m for m in sys.modules if m.startswith('mnv3_jax.'))
assert not heavy and ours == ['mnv3_jax.defaults'], (heavy, ours)
'''
  result = subprocess.run([sys.executable, '-c', script, *CONFIG_FILES], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stdout + result.stderr
  assert set(CONFIG_FILES) >= {'default', 'small', 'large', 'demo'}


def test_model_and_data_fields_are_the_defaults():
  c = default.base_config()
  assert c.model.to_dict() == defaults.MODEL
  assert c.data.to_dict() == defaults.DATA
  assert c.data.get_ref('data_dir').get_type() is str     # unset, settable from the command line
  assert c.model.bn_momentum == 0.997                       # the recipe's (TF-slim, Model Garden)


def test_small_and_large_differ_only_in_the_variant():
  s, l = small.get_config().to_dict(), large.get_config().to_dict()
  assert (s['model'].pop('variant'), l['model'].pop('variant')) == ('small', 'large')
  assert s == l
  s, l = small.get_config('demo').to_dict(), large.get_config('demo').to_dict()
  assert (s['model'].pop('variant'), l['model'].pop('variant')) == ('small', 'large')
  assert s == l


def _parse(argv):
  """The config main.py gets from `argv` (its flag, absl's parser)."""
  values, argv = flags.FlagValues(), ['main.py', *argv]
  config_flags.DEFINE_config_file('config', None, 'config file', flag_values=values,
                                  lock_config=True, sys_argv=argv)
  values(argv)
  return values.config


@pytest.mark.parametrize('argv, expected', [
    (['--config=configs/small.py'], {'model.variant': 'small', 'model.width': 1.0,
                                     'data.image_size': 224, 'batch_size': 4096}),
    (['--config=configs/large.py:width=0.75'], {'model.variant': 'large', 'model.width': 0.75}),
    (['--config=configs/small.py:width=0.75,res=192,batch=1024'],
     {'model.variant': 'small', 'model.width': 0.75, 'data.image_size': 192, 'batch_size': 1024}),
    (['--config=configs/large.py:minimalistic'], {'model.variant': 'large',
                                                  'model.minimalistic': True}),
    (['--config=configs/small.py:demo'], {'model.variant': 'small', 'data.dataset': 'digits',
                                          'data.image_size': 32, 'batch_size': 64}),
    (['--config=configs/demo.py'], {'model.variant': 'small', 'data.dataset': 'digits'}),
    (['--config=configs/small.py', '--config.model.activation=relu',
      '--config.data.data_dir=gs://b/tfds', '--config.model.dtype=float32'],
     {'model.activation': 'relu', 'data.data_dir': 'gs://b/tfds', 'model.dtype': 'float32'}),
])
def test_command_line_forms(argv, expected):
  config = _parse(argv)
  for path, value in expected.items():
    node = config
    for key in path.split('.'):
      node = node[key]
    assert node == value, path


def test_demo_forms_agree():
  assert small.get_config('demo').to_dict() == demo.get_config().to_dict() == \
      demo.demo_config().to_dict()


@pytest.mark.parametrize('arg, message', [
    ('widht=0.5,res=96', "Unknown config-string key 'widht' in 'widht=0.5,res=96'; allowed: "
                         "['activation', 'batch', 'dataset', 'demo', 'epochs', 'minimalistic', "
                         "'res', 'seed', 'variant', 'width']."),
    ('res=abc', "Bad value 'abc' for config-string key 'res'."),
    ('minimalistic=maybe', "Bad value 'maybe' for config-string key 'minimalistic'."),
])
def test_bad_config_strings_are_named(arg, message):
  for module in (small, large, demo, default):
    with pytest.raises(ValueError) as error:
      module.get_config(arg)
    assert str(error.value) == message


def test_input_pipeline_data_config_is_the_same():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from mnv3_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  assert input_pipeline.default_data_config().to_dict() == default.base_config().data.to_dict()
  assert defaults.DATA['num_parallel_calls'] == tf.data.AUTOTUNE


def test_model_takes_the_config_options_and_names_a_bad_dtype():
  """train/ hands config.model to the model as it is: 'auto' dtype included (resolved by the
  model: float32 on this CPU); a bad dtype is a ValueError when the module is built (preflight,
  before any compile)."""
  from mnv3_jax.model import MobileNetV3  # pylint: disable=g-import-not-at-top
  config = small.get_config()
  model = MobileNetV3(**config.model)
  assert model.dtype == 'auto' and model.bn_momentum == defaults.MODEL['bn_momentum']
  assert MobileNetV3().dtype == defaults.MODEL['dtype']
  config.model.dtype = 'float16'
  with pytest.raises(ValueError, match="float16"):
    MobileNetV3(**config.model)
