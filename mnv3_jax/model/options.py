"""The options of `MobileNetV3` (their defaults: `mnv3_jax.defaults.MODEL`): allowed values,
their validation, the compute dtype and the input checks."""
from typing import Tuple

import jax
import jax.numpy as jnp

from mnv3_jax.model import activations
from mnv3_jax.model.tables import TABLES
from mnv3_jax.ops import depthwise

DTYPES = ('auto', 'float32', 'bfloat16')   # 'auto': bfloat16 on TPU/GPU, float32 on CPU
LAST_STAGES = ('efficient', 'v2')
PADDINGS = ('same', 'symmetric')
# 'none': the network sees [-1, 1] images as they come (Keras, TF, timm's tf_ ports);
# 'imagenet': it sees (x01 - mean) / std of x01 = (x + 1) / 2 (torchvision, timm's own weights).
INPUT_NORMS = ('none', 'imagenet')
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _check_choice(name, value, allowed):
  if value not in allowed:
    raise ValueError(f'Unknown {name} {value!r}; allowed: {sorted(allowed)}.')


def _check_number(name, value, allowed, ok, integer=False):
  kinds = (int,) if integer else (int, float)
  if isinstance(value, bool) or not isinstance(value, kinds) or not ok(value):
    raise ValueError(f'Invalid {name} {value!r}; allowed: {allowed}.')


def validate_options(m) -> None:
  """Raises ValueError naming the first bad option of `m` (a MobileNetV3) and what is allowed."""
  _check_choice('variant', m.variant, TABLES)
  _check_number('width', m.width, 'a finite number > 0', lambda v: 0 < v < float('inf'))
  _check_number('num_classes', m.num_classes, 'an integer >= 1', lambda v: v >= 1, True)
  _check_number('dropout_rate', m.dropout_rate, 'a number in [0, 1)', lambda v: 0 <= v < 1)
  _check_number('bn_momentum', m.bn_momentum, 'a number in [0, 1)', lambda v: 0 <= v < 1)
  _check_number('bn_epsilon', m.bn_epsilon, 'a number > 0', lambda v: v > 0)
  _check_number('stem_filters', m.stem_filters, 'an integer >= 1', lambda v: v >= 1, True)
  _check_choice('activation', m.activation, activations.ACTIVATIONS)
  _check_choice('se_gate', m.se_gate, activations.GATES)
  _check_choice('dtype', m.dtype, DTYPES)
  _check_choice('last_stage', m.last_stage, LAST_STAGES)
  _check_choice('padding', m.padding, PADDINGS)
  _check_choice('input_norm', m.input_norm, INPUT_NORMS)
  _check_choice('depthwise_impl', m.depthwise_impl, depthwise.IMPLS)
  if not isinstance(m.minimalistic, bool) or not isinstance(m.se, bool):
    raise ValueError(f'minimalistic and se must be booleans; got {m.minimalistic!r}, {m.se!r}.')


def compute_dtype(name: str) -> jnp.dtype:
  """The compute dtype of the `dtype` option: 'auto' is bfloat16 on TPU/GPU, float32 on CPU."""
  if name == 'auto':
    name = 'float32' if jax.default_backend() == 'cpu' else 'bfloat16'
  return jnp.dtype(name)


def check_input_shape(shape: Tuple[int, ...]) -> None:
  """Raises ValueError unless `shape` is NHWC with H, W >= 32 and C >= 1."""
  if len(shape) != 4 or min(shape[1:3]) < 32 or shape[3] < 1:
    raise ValueError(f'Input shape {tuple(shape)} not allowed: expected (N, H, W, C) '
                     'images with H >= 32 and W >= 32 (any aspect ratio).')
