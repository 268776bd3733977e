"""The layers of quantization-aware training: conv + folded BatchNorm, dense, activations, each
fake-quantized where TFLite's int8 kernels requantize.

Every layer has the parameter and BatchNorm-statistics names of its float counterpart in
`model.blocks` ('conv/kernel', 'bn/scale', ..., nn.Dense's 'kernel'/'bias'), so a float
checkpoint loads into the QAT model as it is. The moving activation ranges live in the
'quant_stats' collection (`fake_quant.MovingRangeQuant`), one per requantization point:

  conv/dense + bias -> [ReLU/ReLU6, fused]  -> 'out'          (CONV_2D, DEPTHWISE_CONV_2D, FC)
  conv/dense + bias -> 'pre' -> h-swish     -> 'out'          (HARD_SWISH is its own op)
  conv/dense + bias -> 'pre' -> sigmoid (its fixed [0, 255/256] grid) * x -> 'out'  (swish)

BatchNorm is folded into the weights as TFLite runs it, w * gamma / sqrt(running var + eps),
then fake-quantized per output channel; while BatchNorm is not frozen, training normalizes with
the batch's moments (the conv output is divided back by the fold factor, Krishnamoorthi 2018,
as torch.ao's ConvBn modules do) and updates the running statistics. `Phase` says, per step,
whether the statistics and ranges still move; its flags may be traced booleans.
"""
from typing import NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
from flax import linen as nn

from mnv3_jax.compress.fake_quant import MovingRangeQuant, fake_quant, fake_quant_weights
from mnv3_jax.model import blocks
from mnv3_jax.ops import conv as conv_lib
from mnv3_jax.ops import depthwise, pointwise
from mnv3_jax.ops.activations import hard_swish

Flag = Union[bool, jax.Array]
# Activations with a TFLite int8 kernel, and where each requantizes (see the module docstring).
FUSED_ACTIVATIONS = {'relu': nn.relu, 'relu6': nn.relu6}
ACTIVATIONS = ('relu', 'relu6', 'hard_swish', 'swish')
# TFLite's int8 LOGISTIC always outputs scale 1/256, zero point -128: the grid of [0, 255/256].
SIGMOID_RANGE = (0.0, 255.0 / 256.0)


class Phase(NamedTuple):
  """What one forward pass does: `train` (Python bool) uses batch statistics and updates the
  running ones and the ranges, unless `bn_frozen` / `ranges_frozen` (bools, maybe traced)."""
  train: bool = False
  bn_frozen: Flag = False
  ranges_frozen: Flag = False


EVAL = Phase()


def check_activation(name: str) -> None:
  """Raises ValueError unless activation `name` has a TFLite int8 kernel that QAT simulates."""
  if name not in ACTIVATIONS:
    raise ValueError(f'Activation {name!r} cannot be quantization-aware trained; allowed: '
                     f'{list(ACTIVATIONS)} (TFLite int8 has no kernel that matches the others).')


def quantize(x: jax.Array, name: str, phase: Phase, decay: float) -> jax.Array:
  """Fake-quantizes `x` with the moving range 'quant_stats/<name>' of the calling module."""
  return MovingRangeQuant(decay, name=name)(x, phase.train, phase.ranges_frozen)


def activate(y: jax.Array, activation: Optional[str], phase: Phase, decay: float) -> jax.Array:
  """`activation` (None: linear) of a layer's output y with TFLite's requantization points."""
  if activation is None or activation in FUSED_ACTIVATIONS:
    y = y if activation is None else FUSED_ACTIVATIONS[activation](y)
    return quantize(y, 'out', phase, decay)
  check_activation(activation)
  y = quantize(y, 'pre', phase, decay)
  if activation == 'hard_swish':
    return quantize(hard_swish(y), 'out', phase, decay)
  return quantize(y * fake_quant(jax.nn.sigmoid(y), *SIGMOID_RANGE), 'out', phase, decay)


def gate(s: jax.Array, kind: str, phase: Phase, decay: float) -> jax.Array:
  """The SE gate of pre-gate logits s: h-sigmoid as TFLite runs it (ADD with fused ReLU6, then
  MUL by 1/6, each requantized) or the sigmoid on its fixed grid."""
  if kind == 'sigmoid':
    return fake_quant(jax.nn.sigmoid(s), *SIGMOID_RANGE)
  s = quantize(jnp.clip(s + 3.0, 0.0, 6.0), 'gate_relu6', phase, decay)
  return quantize(s * (1.0 / 6.0), 'gate', phase, decay)


class _Kernel(nn.Module):
  """The 'kernel' param of a conv, under the name its float layer gives it."""
  shape: tuple
  init: nn.initializers.Initializer

  @nn.compact
  def __call__(self) -> jax.Array:
    return self.param('kernel', self.init, self.shape, jnp.float32)


class _BatchNormVariables(nn.Module):
  """The variables of `ops.batchnorm.BatchNorm` (params scale/bias, batch_stats mean/var)."""
  channels: int

  @nn.compact
  def __call__(self):
    c = self.channels
    return (self.param('scale', nn.initializers.ones, (c,), jnp.float32),
            self.param('bias', nn.initializers.zeros, (c,), jnp.float32),
            self.variable('batch_stats', 'mean', jnp.zeros, (c,), jnp.float32),
            self.variable('batch_stats', 'var', jnp.ones, (c,), jnp.float32))


class QConvBN(nn.Module):
  """`blocks.ConvBN` with its BatchNorm folded into fake-quantized weights, then `activate`.

  (N, H, W, C) -> (N, H/stride, W/stride, features), float32. activation: a name of ACTIVATIONS
  or None (linear).
  """
  features: int
  kernel_size: int = 1
  stride: int = 1
  depthwise: bool = False
  activation: Optional[str] = None
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-3
  padding: str = 'same'
  depthwise_impl: str = 'auto'
  range_decay: float = 0.99

  @nn.compact
  def __call__(self, x: jax.Array, phase: Phase) -> jax.Array:
    x, k, cin = x.astype(jnp.float32), self.kernel_size, x.shape[-1]
    if self.depthwise:
      init = nn.initializers.variance_scaling(2.0, 'fan_in', 'truncated_normal')
      shape = (k, k, 1, cin)
    else:
      init = blocks.conv_kernel_init()
      shape = (cin, self.features) if k == 1 and self.stride == 1 else (k, k, cin, self.features)
    kernel = _Kernel(shape, init, name='conv')()
    scale, bias, mean, var = _BatchNormVariables(shape[-1], name='bn')()
    fold = scale * jax.lax.rsqrt(var.value + self.bn_epsilon)
    y = self._conv(x, fake_quant_weights(kernel * fold))
    folded = y + (bias - mean.value * fold)
    if phase.train:
      # The float conv's output (up to the weights' rounding), normalized with its batch moments.
      unfolded = y / jnp.where(fold == 0, 1.0, fold)
      m = jnp.mean(unfolded, axis=(0, 1, 2))
      v = jnp.maximum(jnp.mean(jnp.square(unfolded), axis=(0, 1, 2)) - m * m, 0.0)
      normalized = (unfolded - m) * (scale * jax.lax.rsqrt(v + self.bn_epsilon)) + bias
      if not self.is_initializing():
        keep = jnp.where(phase.bn_frozen, 1.0, self.bn_momentum)
        m, v = jax.lax.stop_gradient((m, v))
        mean.value = keep * mean.value + (1 - keep) * m
        var.value = keep * var.value + (1 - keep) * v
      folded = jnp.where(phase.bn_frozen, folded, normalized)
    return activate(folded, self.activation, phase, self.range_decay)

  def _conv(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
    if len(kernel.shape) == 2:
      return pointwise.pointwise(x, kernel)
    pads = blocks.spatial_padding(x.shape, self.kernel_size, self.stride, self.padding)
    if self.depthwise:
      return depthwise.depthwise_conv(x, kernel, self.stride, pads, self.depthwise_impl)
    return conv_lib.conv(x, kernel, self.stride, pads)


class QDense(nn.Module):
  """`nn.Dense` (its 'kernel' (Cin, features) and 'bias') with per-channel fake-quantized weights
  and `activate`: (..., Cin) -> (..., features), float32."""
  features: int
  activation: Optional[str] = None
  range_decay: float = 0.99
  kernel_init: nn.initializers.Initializer = nn.linear.default_kernel_init

  @nn.compact
  def __call__(self, x: jax.Array, phase: Phase) -> jax.Array:
    kernel = self.param('kernel', self.kernel_init, (x.shape[-1], self.features), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32)
    y = x.astype(jnp.float32) @ fake_quant_weights(kernel) + bias
    return activate(y, self.activation, phase, self.range_decay)
