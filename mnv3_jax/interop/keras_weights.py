"""Keras MobileNetV3 (`keras.applications.MobileNetV3Large/Small`) -> Flax variables.

`from_keras(source, model)` returns {'params', 'batch_stats'} for a `mnv3_jax.model.MobileNetV3`
from a Keras model object or a `.keras`, `.h5` or `.weights.h5` file. Every Keras weight is mapped
by its layer name to one Flax leaf and every Flax leaf must be filled with a weight of its shape;
anything else is a ValueError naming the Keras layer, the Flax path and both shapes.

Only shapes are checked: the caller chooses Flax options that compute what the Keras model does
(the defaults; activation, se_gate and padding are not visible in the weights).
Keras is imported only to read files, so converting a model object costs no TensorFlow import.
"""
import os
import re
import warnings
import zipfile
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from mnv3_jax import model as model_lib

Path = Tuple[str, ...]

# Keras names block i `expanded_conv_{i}_*`, block 0 `expanded_conv_*` (see keras/src/applications/
# mobilenet_v3.py); the SE convs are `..._squeeze_excite_conv` (reduce) and `..._conv_1` (expand).
_BLOCK = re.compile(r'expanded_conv(?:_(\d+))?_(expand|depthwise|project|squeeze_excite_conv_1|'
                    r'squeeze_excite_conv)(_bn)?')
_SE = {'squeeze_excite_conv': 'reduce', 'squeeze_excite_conv_1': 'expand'}
_OUTSIDE_BLOCKS = {
    'conv': ('stem', 'conv'), 'conv_bn': ('stem', 'bn'),
    'conv_1': ('head_conv', 'conv'), 'conv_1_bn': ('head_conv', 'bn'),
    'conv_2': ('pre_logits',), 'logits': ('logits',),
}
_BN = {'gamma': ('params', 'scale'), 'beta': ('params', 'bias'),
       'moving_mean': ('batch_stats', 'mean'), 'moving_variance': ('batch_stats', 'var')}
_MAX_LISTED = 6


def flax_path(layer: str, weight: str) -> Optional[Path]:
  """(collection, *module path, leaf) of Keras weight `weight` of layer `layer`; None if unknown."""
  match = _BLOCK.fullmatch(layer)
  if match:
    index, part, bn = match.groups()
    if part in _SE:
      module = None if bn else (f'block_{index or 0}', 'se', _SE[part])
    else:
      module = (f'block_{index or 0}', part, 'bn' if bn else 'conv')
  else:
    module = _OUTSIDE_BLOCKS.get(layer)
  if module is None:
    return None
  if module[-1] == 'bn':
    return (_BN[weight][0], *module, _BN[weight][1]) if weight in _BN else None
  return ('params', *module, weight) if weight in ('kernel', 'bias') else None


def _to_flax_layout(path: Path, value: np.ndarray) -> np.ndarray:
  """Depthwise kernels (k, k, C, 1) -> (k, k, 1, C); 1x1 conv kernels (1, 1, in, out) -> (in, out)."""
  if path[-1] != 'kernel' or value.ndim != 4:
    return value
  if path[-3] == 'depthwise':
    return value.transpose(0, 1, 3, 2)
  return value.reshape(value.shape[2:]) if value.shape[:2] == (1, 1) else value


def describe(model: model_lib.MobileNetV3) -> str:
  """The options of `model` that its weights' shapes show, for error messages."""
  return (f'MobileNetV3(variant={model.variant!r}, width={model.width}, '
          f'minimalistic={model.minimalistic}, num_classes={model.num_classes})')


def _problems(title: str, items: list) -> str:
  more = f' (and {len(items) - _MAX_LISTED} more)' if len(items) > _MAX_LISTED else ''
  return f'\n  {title}: ' + '; '.join(items[:_MAX_LISTED]) + more


def from_keras(source: Any, model: model_lib.MobileNetV3) -> Dict[str, Any]:
  """Converts a Keras MobileNetV3 into Flax variables {'params', 'batch_stats'} for `model`.

  source: a keras.Model built by keras.applications.MobileNetV3Large/Small (include_top=True),
    or a path to one saved as `.keras`, `.h5` or `.weights.h5` (see `load_keras`).
  Returns float32 arrays in `model`'s tree (kernels in Flax layout). Raises ValueError when a
  Keras weight has no Flax leaf, a leaf no Keras weight, or shapes differ.
  """
  if isinstance(source, (str, os.PathLike)):
    source = load_keras(source, model)
  if not hasattr(source, 'layers'):
    raise ValueError(f'source must be a keras.Model or a file path; got {type(source).__name__}.')
  weights = []
  for layer in source.layers:
    for weight in layer.weights:
      short = weight.name.split('/')[-1].split(':')[0]  # tf.keras 2 says 'conv/kernel:0'
      weights.append((f'{layer.name}/{short}', flax_path(layer.name, short),
                      np.asarray(weight.numpy())))
  return fill_leaves(weights, model, lambda value, path, shape: _to_flax_layout(path, value),
                     source=f'Keras model {getattr(source, "name", "")!r}', kind='Keras')


def fill_leaves(weights, model: model_lib.MobileNetV3, layout, source: str,
                kind: str) -> Dict[str, Any]:
  """Places named weights into `model`'s variable tree, or explains why they do not fit.

  weights: (name, flax path or None if unknown, array) triples, as the source stores them.
  layout(array, path, expected_shape) -> the array in Flax layout. source names the weights in
  errors (e.g. "Keras model 'x'"), kind their family (e.g. 'Keras'). Returns {'params',
  'batch_stats'} of arrays in the model's dtypes. Raises ValueError listing every weight without
  a leaf, every leaf without a weight and every shape mismatch.
  """
  # The tree depends on neither the input size nor the depthwise implementation: trace the
  # cheapest (the 'shifted' one traces k*k ops per layer).
  shapes_model = model.clone(depthwise_impl='conv')
  expected = traverse_util.flatten_dict(jax.eval_shape(
      lambda rng: model_lib.init_variables(shapes_model, rng, (32, 32)), jax.random.key(0)))
  found, claimed, unknown, mismatched = {}, set(), [], []
  for name, path, value in weights:
    if path is None or path not in expected or path in claimed:
      unknown.append(f'{name} {tuple(value.shape)}')
      continue
    claimed.add(path)
    converted = layout(value, path, expected[path].shape)
    if converted.shape != expected[path].shape:
      mismatched.append(f'{kind} {name} {tuple(value.shape)} -> {"/".join(path)} has shape '
                        f'{converted.shape} but the Flax model expects {expected[path].shape}')
      continue
    found[path] = jnp.asarray(converted, expected[path].dtype)
  missing = [f'{"/".join(p)} {expected[p].shape}' for p in expected if p not in claimed]
  if unknown or mismatched or missing:
    raise ValueError(
        f'{source} does not fit {describe(model)}:'
        + (_problems('shape mismatches', mismatched) if mismatched else '')
        + (_problems(f'{kind} weights left unused', unknown) if unknown else '')
        + (_problems(f'Flax leaves without a {kind} weight', missing) if missing else ''))
  return traverse_util.unflatten_dict(found)


def keras_architecture(model: model_lib.MobileNetV3, input_shape=None):
  """The randomly initialised keras.applications model with `model`'s variant, width (alpha),
  minimalistic and num_classes; no preprocessing layer, logits out. input_shape: (H, W, 3) or None.
  """
  import keras  # pylint: disable=g-import-not-at-top
  build = {'large': keras.applications.MobileNetV3Large,
           'small': keras.applications.MobileNetV3Small}[model.variant]
  return build(input_shape=input_shape, alpha=model.width, minimalistic=model.minimalistic,
               classes=model.num_classes, weights=None, include_preprocessing=False,
               classifier_activation=None)


def _first_line(error: Exception) -> str:
  return (str(error).splitlines() or [''])[0][:300] or type(error).__name__


def load_keras(path, model: model_lib.MobileNetV3):
  """Reads a Keras MobileNetV3 from a file.

  `.keras`: the saved model itself. `.weights.h5` and `.h5` (a legacy full model or weights-only
  file such as the official ImageNet downloads): weights loaded into `keras_architecture(model)`,
  because Keras 3 cannot rebuild a legacy-saved MobileNetV3 graph (its `x + 3.0` op). No file
  runs code: `.keras` loads in Keras' safe mode, `.h5` files give only arrays.
  """
  path = os.fspath(path)
  if not path.endswith(('.keras', '.h5')):
    raise ValueError(f'Unknown Keras file type {path!r}; allowed: .keras, .h5, .weights.h5.')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'No Keras file at {path!r}.')
  import keras  # pylint: disable=g-import-not-at-top
  if path.endswith('.keras'):
    # safe_mode (Keras' default, stated here so it stays): refuses to deserialize Lambda layers'
    # marshalled bytecode and classes outside Keras, so loading a file never runs code from it.
    try:
      return keras.models.load_model(path, compile=False, safe_mode=True)
    except (ValueError, OSError, zipfile.BadZipFile) as e:
      raise ValueError(f'Cannot read {path!r} as a .keras file ({_first_line(e)}); allowed: a '
                       'complete .keras zip archive written by keras.Model.save.') from e
  keras_model = keras_architecture(model)
  with warnings.catch_warnings():
    # Keras 3.15 also walks the Functional's per-depth operation lists, which hold only the
    # weightless ops of hard_sigmoid here, and warns once per list that they are not in the file.
    warnings.filterwarnings('ignore', message='Skipping nested container')
    try:
      keras_model.load_weights(path)
    except ValueError as e:
      raise ValueError(f'{path!r} does not hold the Keras weights of {describe(model)}: '
                       f'{" ".join(str(e).split())[:400]}') from e
    except OSError as e:     # h5py: not HDF5, truncated, unreadable
      raise ValueError(f'Cannot read {path!r} as an HDF5 file ({_first_line(e)}); allowed: a '
                       'complete .h5 / .weights.h5 file written by Keras.') from e
  return keras_model
