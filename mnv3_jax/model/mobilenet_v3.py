"""MobileNetV3 Large and Small as in the official TF-slim / Keras code, with ablation switches.

The network is stem -> one bneck per row of the block table (`tables.py`) -> head. `block_specs`
resolves the table for the options (width, minimalistic, SE, activation) once; the module and
the fused inference pass (`fused.py`) both build from it.

Input: images (N, H, W, C), H and W >= 32, values in [-1, 1]. Output: float32 logits (N, classes).
"""
from typing import NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
from flax import linen as nn

from mnv3_jax import defaults
from mnv3_jax.model import activations, blocks, options
from mnv3_jax.model.tables import (HEAD_EXPANSION, HS, LAST_POINT, RE, SPINDLE_RATIO,
                                   STEM_FILTERS, TABLES)

_D = defaults.MODEL


class BlockSpec(NamedTuple):
  """One bneck as built: widths after the width multiplier and rounding; activation by name."""
  kernel: int
  expanded: int
  out: int
  stride: int
  activation: str
  expand: bool                 # False: no 1x1 expansion (expansion ratio 1)
  se_squeeze: Optional[int]    # squeeze width, None without SE


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
  variant: str = _D['variant']
  width: float = _D['width']
  minimalistic: bool = _D['minimalistic']
  num_classes: int = _D['num_classes']
  dropout_rate: float = _D['dropout_rate']
  dtype: str = _D['dtype']
  bn_momentum: float = _D['bn_momentum']
  bn_epsilon: float = _D['bn_epsilon']
  activation: str = _D['activation']
  se: bool = _D['se']
  se_gate: str = _D['se_gate']
  stem_filters: int = _D['stem_filters']
  last_stage: str = _D['last_stage']
  depthwise_impl: str = _D['depthwise_impl']
  padding: str = _D['padding']
  input_norm: str = _D['input_norm']

  def __post_init__(self):
    options.validate_options(self)
    super().__post_init__()

  def activation_name(self, kind: str) -> str:
    """The activation of a table's 'RE' or 'HS' layer under these options."""
    return 'relu' if kind == RE or self.minimalistic else self.activation

  def block_specs(self) -> Tuple[BlockSpec, ...]:
    """The bnecks as built: expansion widths are the table's ratios of the actual input width."""
    specs, in_width, in_table = [], self.stem_filters, STEM_FILTERS
    for row in TABLES[self.variant]:
      ratio = row.exp / in_table
      expanded = blocks.make_divisible(in_width * ratio)
      use_se = row.se and self.se and not self.minimalistic
      specs.append(BlockSpec(
          kernel=3 if self.minimalistic else row.kernel, expanded=expanded,
          out=blocks.make_divisible(row.out * self.width), stride=row.stride,
          activation=self.activation_name(row.act), expand=ratio != 1,
          se_squeeze=blocks.make_divisible(expanded / 4) if use_se else None))
      in_width, in_table = specs[-1].out, row.out
    return tuple(specs)

  def head_widths(self, last_bneck: int) -> Tuple[int, int]:
    """(head 1x1 conv width, pre-logits width); the latter scales only when width > 1."""
    last_point = LAST_POINT[self.variant]
    if self.width > 1:
      last_point = blocks.make_divisible(last_point * self.width)
    return blocks.make_divisible(last_bneck * HEAD_EXPANSION), last_point

  def prepare_input(self, x: jax.Array) -> jax.Array:
    """[-1, 1] images -> what the stem sees, in the compute dtype."""
    if self.input_norm == 'imagenet':
      x = ((x.astype(jnp.float32) + 1) / 2 - jnp.array(options.IMAGENET_MEAN)) / jnp.array(
          options.IMAGENET_STD)
    return x.astype(options.compute_dtype(self.dtype))

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    options.check_input_shape(x.shape)
    dtype = options.compute_dtype(self.dtype)
    conv = dict(bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon, dtype=dtype,
                padding=self.padding, depthwise_impl=self.depthwise_impl)
    x = self.prepare_input(x)
    hs = activations.get_activation(self.activation_name(HS))
    x = blocks.ConvBN(self.stem_filters, 3, 2, activation=hs, name='stem', **conv)(x, train)
    for i, spec in enumerate(self.block_specs()):
      x = blocks.InvertedResidual(
          kernel_size=spec.kernel, expanded=spec.expanded, out=spec.out, stride=spec.stride,
          activation=activations.get_activation(spec.activation), expand=spec.expand,
          se_squeeze=spec.se_squeeze, se_gate=activations.get_gate(self.se_gate),
          name=f'block_{i}', **conv)(x, train)
    return self._head(x, train, hs, conv)

  def _head(self, x: jax.Array, train: bool, act, conv: dict) -> jax.Array:
    head_width, last_point = self.head_widths(x.shape[-1])
    last_bneck = x.shape[-1]
    x = blocks.ConvBN(head_width, activation=act, name='head_conv', **conv)(x, train)
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


def init_variables(model: MobileNetV3, rng: jax.Array, image_size: Tuple[int, int] = (224, 224),
                   channels: int = 3):
  """Initialises {'params', 'batch_stats'} for (1, H, W, C) inputs; checks the shape first."""
  shape = (1, *image_size, channels)
  options.check_input_shape(shape)
  return model.init(rng, jnp.zeros(shape, jnp.float32), train=False)
