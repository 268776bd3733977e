"""MobileNetV3 Large and Small as in the official TF-slim / Keras code, with ablation switches.

The block tables are the paper's Tables 1 and 2 as the official code builds them (Small's last
bnecks and head corrected to the code: no SE on the 576 conv, a 1024-wide penultimate layer).
Expansion widths are written at width 1.0; the builder applies them as ratios of the block's
actual input width, rounded with `make_divisible`, exactly as the official code does.

Input: images (N, H, W, C), H and W >= 32, values in [-1, 1]. Output: float32 logits (N, classes).
"""
from typing import NamedTuple, Tuple

import jax
import jax.numpy as jnp
from flax import linen as nn

from mnv3_jax import depthwise, layers


class Bneck(NamedTuple):
  """One row of the paper's table: a bneck (inverted residual) block at width 1.0."""
  kernel: int      # depthwise kernel size (3 or 5)
  exp: int         # expansion width ("exp size")
  out: int         # output width ("#out")
  se: bool         # squeeze-and-excite after the depthwise conv
  act: str         # 'RE' (ReLU) or 'HS' (the `activation` option, h-swish by default)
  stride: int


RE, HS = 'RE', 'HS'

#                 k   exp  out   SE     NL  s
LARGE = (
    Bneck(3, 16, 16, False, RE, 1),
    Bneck(3, 64, 24, False, RE, 2),
    Bneck(3, 72, 24, False, RE, 1),
    Bneck(5, 72, 40, True, RE, 2),
    Bneck(5, 120, 40, True, RE, 1),
    Bneck(5, 120, 40, True, RE, 1),
    Bneck(3, 240, 80, False, HS, 2),
    Bneck(3, 200, 80, False, HS, 1),
    Bneck(3, 184, 80, False, HS, 1),
    Bneck(3, 184, 80, False, HS, 1),
    Bneck(3, 480, 112, True, HS, 1),
    Bneck(3, 672, 112, True, HS, 1),
    Bneck(5, 672, 160, True, HS, 2),
    Bneck(5, 960, 160, True, HS, 1),
    Bneck(5, 960, 160, True, HS, 1),
)

SMALL = (
    Bneck(3, 16, 16, True, RE, 2),
    Bneck(3, 72, 24, False, RE, 2),
    Bneck(3, 88, 24, False, RE, 1),
    Bneck(5, 96, 40, True, HS, 2),
    Bneck(5, 240, 40, True, HS, 1),
    Bneck(5, 240, 40, True, HS, 1),
    Bneck(5, 120, 48, True, HS, 1),
    Bneck(5, 144, 48, True, HS, 1),
    Bneck(5, 288, 96, True, HS, 2),
    Bneck(5, 576, 96, True, HS, 1),
    Bneck(5, 576, 96, True, HS, 1),
)

TABLES = {'large': LARGE, 'small': SMALL}
STEM_FILTERS = 16           # input width of the first bneck in the tables
HEAD_EXPANSION = 6          # the last 1x1 conv: 6x the last bneck (960 / 576)
LAST_POINT = {'large': 1280, 'small': 1024}   # the pooled 1x1 conv before the classifier
SPINDLE_RATIO = 2           # 'v2' last stage: project to 2x the last bneck (Large: 320)

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
  _check_choice('activation', m.activation, layers.ACTIVATIONS)
  _check_choice('se_gate', m.se_gate, layers.GATES)
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
    return layers.get_activation('relu' if kind == RE or self.minimalistic else self.activation)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    check_input_shape(x.shape)
    dtype = jnp.dtype(self.dtype)
    common = dict(bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon, dtype=dtype)
    conv = dict(padding=self.padding, depthwise_impl=self.depthwise_impl, **common)
    if self.input_norm == 'imagenet':
      x = ((x.astype(jnp.float32) + 1) / 2 - jnp.array(IMAGENET_MEAN)) / jnp.array(IMAGENET_STD)
    x = x.astype(dtype)
    x = layers.ConvBN(self.stem_filters, 3, 2, activation=self._act(HS), name='stem',
                      **conv)(x, train)
    in_width = STEM_FILTERS
    for i, row in enumerate(TABLES[self.variant]):
      ratio = row.exp / in_width
      in_width = row.out
      expanded = layers.make_divisible(x.shape[-1] * ratio)
      use_se = row.se and self.se and not self.minimalistic
      x = layers.InvertedResidual(
          kernel_size=3 if self.minimalistic else row.kernel,
          expanded=expanded,
          out=layers.make_divisible(row.out * self.width),
          stride=row.stride,
          activation=self._act(row.act),
          expand=ratio != 1,
          se_squeeze=layers.make_divisible(expanded / 4) if use_se else None,
          se_gate=layers.get_gate(self.se_gate),
          name=f'block_{i}', **conv)(x, train)
    return self._head(x, train, conv)

  def _head(self, x: jax.Array, train: bool, conv: dict) -> jax.Array:
    act = self._act(HS)
    last_point = LAST_POINT[self.variant]
    if self.width > 1:
      last_point = layers.make_divisible(last_point * self.width)
    last_bneck = x.shape[-1]
    x = layers.ConvBN(layers.make_divisible(last_bneck * HEAD_EXPANSION), activation=act,
                      name='head_conv', **conv)(x, train)
    if self.last_stage == 'v2':
      x = layers.ConvBN(x.shape[-1], 3, depthwise=True, activation=act, name='head_depthwise',
                        **conv)(x, train)
      x = layers.ConvBN(layers.make_divisible(last_bneck * SPINDLE_RATIO), name='head_project',
                        **conv)(x, train)
      x = layers.ConvBN(last_point, activation=act, name='pre_logits', **conv)(x, train)
      x = jnp.mean(x, axis=(1, 2))
    else:
      x = jnp.mean(x, axis=(1, 2))
      x = nn.Dense(last_point, dtype=conv['dtype'], kernel_init=layers.conv_kernel_init(),
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
