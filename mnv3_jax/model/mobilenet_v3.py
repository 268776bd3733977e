"""MobileNetV3 Large and Small as in the official TF-slim / Keras code, with ablation switches.

The network is built from the block tables (`tables.py`): stem, one bneck per row, head.

Input: images (N, H, W, C), H and W >= 32, values in [-1, 1]. Output: float32 logits (N, classes).
"""
from typing import Tuple

import jax
import jax.numpy as jnp
from flax import linen as nn

from mnv3_jax.ops import depthwise
from mnv3_jax.model import blocks
from mnv3_jax.model.tables import (HEAD_EXPANSION, HS, LAST_POINT, RE, SPINDLE_RATIO,
                                   STEM_FILTERS, TABLES)


DTYPES = ('float32', 'bfloat16')
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


def validate_options(m: 'MobileNetV3') -> None:
  """Raises ValueError naming the first bad option of `m` and what is allowed."""
  _check_choice('variant', m.variant, TABLES)
  _check_number('width', m.width, 'a finite number > 0', lambda v: 0 < v < float('inf'))
  _check_number('num_classes', m.num_classes, 'an integer >= 1', lambda v: v >= 1, True)
  _check_number('dropout_rate', m.dropout_rate, 'a number in [0, 1)', lambda v: 0 <= v < 1)
  _check_number('bn_momentum', m.bn_momentum, 'a number in [0, 1)', lambda v: 0 <= v < 1)
  _check_number('bn_epsilon', m.bn_epsilon, 'a number > 0', lambda v: v > 0)
  _check_number('stem_filters', m.stem_filters, 'an integer >= 1', lambda v: v >= 1, True)
  _check_choice('activation', m.activation, blocks.ACTIVATIONS)
  _check_choice('se_gate', m.se_gate, blocks.GATES)
  _check_choice('dtype', m.dtype, DTYPES)
  _check_choice('last_stage', m.last_stage, LAST_STAGES)
  _check_choice('padding', m.padding, PADDINGS)
  _check_choice('input_norm', m.input_norm, INPUT_NORMS)
  _check_choice('depthwise_impl', m.depthwise_impl, depthwise.IMPLS)
  if not isinstance(m.minimalistic, bool) or not isinstance(m.se, bool):
    raise ValueError(f'minimalistic and se must be booleans; got {m.minimalistic!r}, {m.se!r}.')


def check_input_shape(shape: Tuple[int, ...]) -> None:
  """Raises ValueError unless `shape` is NHWC with H, W >= 32 and C >= 1."""
  if len(shape) != 4 or min(shape[1:3]) < 32 or shape[3] < 1:
    raise ValueError(f'Input shape {tuple(shape)} not allowed: expected (N, H, W, C) '
                     'images with H >= 32 and W >= 32 (any aspect ratio).')


class MobileNetV3(nn.Module):
  """MobileNetV3 (Howard et al. 2019); fields are the options of `config.model`.

  Ablation switches of the paper's hand-made improvements:
    activation: what the table's 'HS' layers (and stem and head) use; 'relu' gives all-ReLU.
    se / se_gate: squeeze-and-excite on or off; its gate (hard_sigmoid | sigmoid).
    stem_filters: 16 (MobileNetV3) or 32 (MobileNetV2's stem).
    last_stage: 'efficient' (pool, then the wide 1x1) or 'v2' (the stage the paper removed:
      1x1 expand, 3x3 depthwise, 1x1 project, 1x1 conv with BN at full resolution, then pool).
  Inputs are always (N, H, W, 3) RGB in [-1, 1]; input_norm 'imagenet' re-normalizes them inside
  the model for weights trained on ImageNet mean/std inputs (torchvision, timm's own).
  """
  variant: str = 'large'
  width: float = 1.0
  minimalistic: bool = False
  num_classes: int = 1000
  dropout_rate: float = 0.2
  dtype: str = 'float32'
  bn_momentum: float = 0.997
  bn_epsilon: float = 1e-3
  activation: str = 'hard_swish'
  se: bool = True
  se_gate: str = 'hard_sigmoid'
  stem_filters: int = STEM_FILTERS
  last_stage: str = 'efficient'
  depthwise_impl: str = 'auto'
  padding: str = 'same'
  input_norm: str = 'none'

  def __post_init__(self):
    validate_options(self)
    super().__post_init__()

  def _act(self, kind: str):
    return blocks.get_activation('relu' if kind == RE or self.minimalistic else self.activation)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    check_input_shape(x.shape)
    dtype = jnp.dtype(self.dtype)
    common = dict(bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon, dtype=dtype)
    conv = dict(padding=self.padding, depthwise_impl=self.depthwise_impl, **common)
    if self.input_norm == 'imagenet':
      x = ((x.astype(jnp.float32) + 1) / 2 - jnp.array(IMAGENET_MEAN)) / jnp.array(IMAGENET_STD)
    x = x.astype(dtype)
    x = blocks.ConvBN(self.stem_filters, 3, 2, activation=self._act(HS), name='stem',
                      **conv)(x, train)
    in_width = STEM_FILTERS
    for i, row in enumerate(TABLES[self.variant]):
      ratio = row.exp / in_width
      in_width = row.out
      expanded = blocks.make_divisible(x.shape[-1] * ratio)
      use_se = row.se and self.se and not self.minimalistic
      x = blocks.InvertedResidual(
          kernel_size=3 if self.minimalistic else row.kernel,
          expanded=expanded,
          out=blocks.make_divisible(row.out * self.width),
          stride=row.stride,
          activation=self._act(row.act),
          expand=ratio != 1,
          se_squeeze=blocks.make_divisible(expanded / 4) if use_se else None,
          se_gate=blocks.get_gate(self.se_gate),
          name=f'block_{i}', **conv)(x, train)
    return self._head(x, train, conv)

  def _head(self, x: jax.Array, train: bool, conv: dict) -> jax.Array:
    act = self._act(HS)
    last_point = LAST_POINT[self.variant]
    if self.width > 1:
      last_point = blocks.make_divisible(last_point * self.width)
    last_bneck = x.shape[-1]
    x = blocks.ConvBN(blocks.make_divisible(last_bneck * HEAD_EXPANSION), activation=act,
                      name='head_conv', **conv)(x, train)
    if self.last_stage == 'v2':
      x = blocks.ConvBN(x.shape[-1], 3, depthwise=True, activation=act, name='head_depthwise',
                        **conv)(x, train)
      x = blocks.ConvBN(blocks.make_divisible(last_bneck * SPINDLE_RATIO), name='head_project',
                        **conv)(x, train)
      x = blocks.ConvBN(last_point, activation=act, name='pre_logits', **conv)(x, train)
      x = jnp.mean(x, axis=(1, 2))
    else:
      x = jnp.mean(x, axis=(1, 2))
      x = nn.Dense(last_point, dtype=conv['dtype'], kernel_init=blocks.conv_kernel_init(),
                   name='pre_logits')(x)
      x = act(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.Dense(self.num_classes, dtype=conv['dtype'],
                 kernel_init=nn.initializers.normal(0.01), name='logits')(x)
    return x.astype(jnp.float32)


def create_model(**options) -> MobileNetV3:
  """Builds a validated MobileNetV3 from keyword options (e.g. `**config.model`)."""
  return MobileNetV3(**options)


def init_variables(model: MobileNetV3, rng: jax.Array, image_size: Tuple[int, int] = (224, 224),
                   channels: int = 3):
  """Initialises {'params', 'batch_stats'} for (1, H, W, C) inputs; checks the shape first."""
  shape = (1, *image_size, channels)
  check_input_shape(shape)
  return model.init(rng, jnp.zeros(shape, jnp.float32), train=False)
