"""Keras -> Flax conversion: logits parity with keras.applications.MobileNetV3, files, errors.

The Keras models get random weights and random BN statistics; the parity tests compare float32
logits of the converted Flax model with Keras' (no preprocessing, no softmax) on batches of two.
"""
import functools
import re

import jax
import keras
import numpy as np
import pytest

from mnv3_jax.interop import keras_weights
from mnv3_jax import model as model_lib

CONFIGS = {  # name: (variant, width, minimalistic)
    'large_1.0': ('large', 1.0, False),
    'large_0.75': ('large', 0.75, False),
    'small_1.0': ('small', 1.0, False),
    'small_0.75': ('small', 0.75, False),
    'large_minimalistic': ('large', 1.0, True),
    'small_minimalistic': ('small', 1.0, True),
}
SQUARE = (224, 224)
ODD = (161, 225)  # odd at every stride-2 layer: TF SAME pads those symmetrically
# Every config at both sizes; each config and each size sees both depthwise implementations.
CASES = [(name, size, ('conv', 'shifted')[(i + j) % 2])
         for i, name in enumerate(CONFIGS) for j, size in enumerate((SQUARE, ODD))]
TOLERANCE = 1e-5

# Keras 3.15 saving on TF calls np.array on its Variables, which numpy 2 flags; not ours to fix.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


def keras_mobilenet(variant, width, minimalistic, input_shape=None, **kwargs):
  build = {'large': keras.applications.MobileNetV3Large,
           'small': keras.applications.MobileNetV3Small}[variant]
  return build(input_shape=input_shape, alpha=width, minimalistic=minimalistic, weights=None,
               include_preprocessing=False, classifier_activation=None, **kwargs)


def images(size, seed):
  return np.random.default_rng(seed).uniform(-1, 1, (2, *size, 3)).astype(np.float32)


def randomize(keras_model, seed):
  """Random kernels, biases, BN gamma/beta; BN statistics random around those of real activations.

  Statistics drawn independently of the activations (e.g. mean 0, variance U(0.5, 2)) let the
  input-dependent part of the activations shrink to ~1e-8 of the constant part by the logits,
  which would make the comparison blind to most of the network.
  """
  rng = np.random.default_rng(seed)
  for weight in keras_model.weights:
    shape = tuple(weight.shape)
    if weight.name == 'kernel':
      fan_in = np.prod(shape[:2] if 'depthwise' in weight.path else shape[:-1])
      weight.assign(rng.normal(0, np.sqrt(2 / fan_in), shape).astype(np.float32))
    elif weight.name in ('bias', 'beta'):
      weight.assign(rng.normal(0, 0.2, shape).astype(np.float32))
    elif weight.name == 'gamma':
      weight.assign(rng.uniform(0.5, 1.5, shape).astype(np.float32))
  bns = [layer for layer in keras_model.layers
         if isinstance(layer, keras.layers.BatchNormalization)]
  for layer in bns:
    layer.momentum = 0.0  # one training-mode call sets the moving statistics to the batch's
  keras_model(images(SQUARE, seed + 1), training=True)
  for layer in bns:
    layer.momentum = 0.999
    var = layer.moving_variance.numpy()
    layer.moving_mean.assign(layer.moving_mean.numpy()
                             + rng.normal(0, 0.1, var.shape).astype(np.float32) * np.sqrt(var))
    layer.moving_variance.assign(var * rng.uniform(0.7, 1.4, var.shape).astype(np.float32))


@functools.lru_cache(maxsize=None)
def random_keras(name, size=None):
  """Keras model of CONFIGS[name] with random weights, the same for every input size.

  size None: any input size, but Keras fixes the padding of its stride-2 depthwise convs when
  it builds the model (imagenet_utils.correct_pad), which is TF SAME only for even inputs; a
  model built for `size` pads as TF SAME does at that size.
  """
  if size is not None:
    keras_model = keras_mobilenet(*CONFIGS[name], input_shape=(*size, 3))
    keras_model.set_weights(random_keras(name).get_weights())
    return keras_model
  keras_model = keras_mobilenet(*CONFIGS[name])
  randomize(keras_model, seed=list(CONFIGS).index(name))
  return keras_model


def flax_model(name, **options):
  variant, width, minimalistic = CONFIGS[name]
  return model_lib.MobileNetV3(variant=variant, width=width, minimalistic=minimalistic, **options)


@functools.lru_cache(maxsize=None)
def converted(name):
  return keras_weights.from_keras(random_keras(name), flax_model(name))


def flax_logits(model, variables, x):
  # LLVM's -O0 halves XLA's CPU compile time, the bulk of this file's runtime; the arithmetic
  # is the same HLO.
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False),
                  compiler_options={'xla_backend_optimization_level': 0})
  return np.asarray(apply(variables, x))


@pytest.mark.parametrize('name,size,impl', CASES,
                         ids=[f'{n}-{h}x{w}-{impl}' for n, (h, w), impl in CASES])
def test_logits_match_keras(name, size, impl):
  keras_model = random_keras(name, None if size == SQUARE else size)
  x = images(size, seed=7)
  ref = np.asarray(keras_model(x, training=False))
  out = flax_logits(flax_model(name, depthwise_impl=impl), converted(name), x)
  assert out.shape == ref.shape == (2, 1000)
  scale = np.abs(ref).max()
  # The two images' logits differ: the comparison sees the input's path through every layer.
  assert np.abs(ref[0] - ref[1]).max() > 0.1 * scale
  assert np.abs(out - ref).max() / scale <= TOLERANCE


def test_variables_have_init_tree_and_keras_values():
  model = flax_model('small_1.0')
  variables = converted('small_1.0')
  init = jax.eval_shape(lambda rng: model_lib.init_variables(model, rng), jax.random.key(0))
  assert jax.tree.structure(variables) == jax.tree.structure(init)
  for got, want in zip(jax.tree.leaves(variables), jax.tree.leaves(init)):
    assert got.shape == want.shape and got.dtype == want.dtype
  keras_model = random_keras('small_1.0')
  depthwise = keras_model.get_layer('expanded_conv_3_depthwise').kernel.numpy()  # (5, 5, 96, 1)
  np.testing.assert_array_equal(variables['params']['block_3']['depthwise']['conv']['kernel'],
                                depthwise.transpose(0, 1, 3, 2))
  np.testing.assert_array_equal(variables['batch_stats']['head_conv']['bn']['var'],
                                keras_model.get_layer('conv_1_bn').moving_variance.numpy())


@pytest.mark.filterwarnings('ignore:You are saving your model as an HDF5 file')
@pytest.mark.parametrize('file_name', ['m.weights.h5', 'm.keras', 'm.h5'])
def test_files_convert_like_the_model(tmp_path, file_name):
  keras_model = random_keras('small_0.75')
  path = tmp_path / file_name
  if file_name.endswith('.weights.h5'):
    keras_model.save_weights(path)
  else:
    keras_model.save(path)
  from_file = keras_weights.from_keras(path, flax_model('small_0.75'))
  jax.tree.map(np.testing.assert_array_equal, from_file, converted('small_0.75'))


def test_small_checkpoint_into_large_model_fails():
  with pytest.raises(ValueError, match='does not fit') as error:
    keras_weights.from_keras(random_keras('small_1.0'), flax_model('large_1.0'))
  message = str(error.value)
  assert 'expanded_conv_squeeze_excite_conv/kernel' in message  # Large's first bneck has no SE
  assert 'Flax leaves without a Keras weight: batch_stats/block_11/' in message  # 11 bnecks, not 15


def test_other_width_fails_naming_layer_and_shapes():
  with pytest.raises(ValueError, match='shape mismatches: Keras expanded_conv_'):
    keras_weights.from_keras(random_keras('large_1.0'), flax_model('large_0.75'))


def test_other_class_count_fails_naming_layer_and_shapes():
  with pytest.raises(ValueError, match=re.escape(
      'Keras logits/kernel (1, 1, 1024, 1000) -> params/logits/kernel has shape (1024, 1000) '
      'but the Flax model expects (1024, 10)')):
    keras_weights.from_keras(random_keras('small_1.0'), flax_model('small_1.0', num_classes=10))


def test_unused_keras_weights_fail():
  with pytest.raises(ValueError, match='Keras weights left unused: '
                     'expanded_conv_squeeze_excite_conv/kernel') as error:
    keras_weights.from_keras(random_keras('small_1.0'), flax_model('small_1.0', se=False))
  assert 'shape mismatches' not in str(error.value)


def test_keras_model_without_top_fails():
  headless = keras_mobilenet('small', 1.0, False, include_top=False)
  with pytest.raises(ValueError, match='Flax leaves without a Keras weight: .*pre_logits/kernel'):
    keras_weights.from_keras(headless, flax_model('small_1.0'))


def test_weights_file_of_other_width_fails(tmp_path):
  path = tmp_path / 'small.weights.h5'
  random_keras('small_1.0').save_weights(path)
  with pytest.raises(ValueError, match=re.escape("does not hold the Keras weights of "
                                                 "MobileNetV3(variant='small', width=0.75")):
    keras_weights.from_keras(path, flax_model('small_0.75'))


def test_bad_sources_fail(tmp_path):
  model = flax_model('small_1.0')
  with pytest.raises(ValueError, match=r'allowed: \.keras, \.h5, \.weights\.h5'):
    keras_weights.from_keras(tmp_path / 'model.ckpt', model)
  with pytest.raises(FileNotFoundError, match='missing.keras'):
    keras_weights.from_keras(tmp_path / 'missing.keras', model)
  with pytest.raises(ValueError, match='keras.Model or a file path; got dict'):
    keras_weights.from_keras({}, model)
