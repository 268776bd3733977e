"""MobileNetV3 for quantization-aware training: the network of `model.MobileNetV3`, built from
the same block specs, as TFLite's int8 kernels will run it (`qat_layers`).

The variables are the float model's ({'params', 'batch_stats'}, same names and shapes) plus
'quant_stats', the moving ranges of every requantization point: the input, each conv and dense
layer's output (and an h-swish's or swish's input), the SE pool, gate and multiply, the residual
add, the pooled features and the logits. A float checkpoint is a QAT starting point as it is.
QAT computes in float32 whatever the model's `dtype` (its fake-quant grids are float32's).

Input: images (N, H, W, 3) in [-1, 1]. Output: float32 logits (N, classes).
"""
from typing import Any, Tuple

import jax
import jax.numpy as jnp
from flax import linen as nn

from mnv3_jax.compress import qat_layers
from mnv3_jax.compress.qat_layers import EVAL, Phase, QConvBN, QDense, quantize
from mnv3_jax.model import blocks, options
from mnv3_jax.model.mobilenet_v3 import MobileNetV3
from mnv3_jax.model.tables import HS, SPINDLE_RATIO

Variables = dict


class QATMobileNetV3(nn.Module):
  """The quantization-aware form of `MobileNetV3(**dict(model_options))`.

  model_options: the float model's options as (name, value) pairs (`from_model` makes them).
  range_decay: the moving ranges' decay per step (torchvision's observers: 0.99).
  Call with `phase` (`qat_layers.Phase`): EVAL (the default) is the deployed int8 network.
  """
  model_options: Tuple[Tuple[str, Any], ...]
  range_decay: float = 0.99

  @classmethod
  def from_model(cls, model: MobileNetV3, range_decay: float = 0.99) -> 'QATMobileNetV3':
    fields = [f for f in MobileNetV3.__dataclass_fields__ if f not in ('parent', 'name')]
    return cls(tuple((f, getattr(model, f)) for f in fields), range_decay)

  @property
  def float_model(self) -> MobileNetV3:
    """The float network these variables also run in (`.apply` with params and batch_stats)."""
    return MobileNetV3(**dict(self.model_options), parent=None)

  def check(self) -> None:
    """Raises ValueError if the float model has a layer TFLite int8 cannot run as simulated."""
    m = self.float_model
    for kind in {m.activation_name(HS), *(s.activation for s in m.block_specs())}:
      qat_layers.check_activation(kind)
    if m.input_norm != 'none':
      raise ValueError(f"QAT needs model.input_norm 'none' (got {m.input_norm!r}): the int8 "
                       'model quantizes its input as it comes.')

  @nn.compact
  def __call__(self, x: jax.Array, phase: Phase = EVAL) -> jax.Array:
    options.check_input_shape(x.shape)
    self.check()
    m, decay = self.float_model, self.range_decay
    conv = dict(bn_momentum=m.bn_momentum, bn_epsilon=m.bn_epsilon, padding=m.padding,
                depthwise_impl=m.depthwise_impl, range_decay=decay)
    hs = m.activation_name(HS)
    x = quantize(x.astype(jnp.float32), 'input', phase, decay)
    x = QConvBN(m.stem_filters, 3, 2, activation=hs, name='stem', **conv)(x, phase)
    for i, spec in enumerate(m.block_specs()):
      x = QInvertedResidual(spec, m.se_gate, conv, name=f'block_{i}')(x, phase)
    head_width, last_point = m.head_widths(x.shape[-1])
    last_bneck = x.shape[-1]
    x = QConvBN(head_width, activation=hs, name='head_conv', **conv)(x, phase)
    if m.last_stage == 'v2':
      x = QConvBN(x.shape[-1], 3, depthwise=True, activation=hs, name='head_depthwise',
                  **conv)(x, phase)
      x = QConvBN(blocks.make_divisible(last_bneck * SPINDLE_RATIO), name='head_project',
                  **conv)(x, phase)
      x = QConvBN(last_point, activation=hs, name='pre_logits', **conv)(x, phase)
      x = quantize(jnp.mean(x, axis=(1, 2)), 'pool', phase, decay)
    else:
      x = quantize(jnp.mean(x, axis=(1, 2)), 'pool', phase, decay)
      x = QDense(last_point, hs, decay, blocks.conv_kernel_init(), name='pre_logits')(x, phase)
    x = nn.Dropout(m.dropout_rate, deterministic=not phase.train)(x)
    return QDense(m.num_classes, None, decay, nn.initializers.normal(0.01),
                  name='logits')(x, phase)


class QInvertedResidual(nn.Module):
  """`blocks.InvertedResidual` of a `BlockSpec`, quantization-aware: expand -> depthwise -> SE
  -> project (-> residual add, requantized)."""
  spec: Any              # mobilenet_v3.BlockSpec
  se_gate: str
  conv: dict             # QConvBN's shared fields

  @nn.compact
  def __call__(self, x: jax.Array, phase: Phase) -> jax.Array:
    spec, decay = self.spec, self.conv['range_decay']
    shortcut = x
    if spec.expand:
      x = QConvBN(spec.expanded, activation=spec.activation, name='expand', **self.conv)(x, phase)
    x = QConvBN(x.shape[-1], spec.kernel, spec.stride, depthwise=True,
                activation=spec.activation, name='depthwise', **self.conv)(x, phase)
    if spec.se_squeeze:
      x = QSqueezeExcite(spec.se_squeeze, self.se_gate, decay, name='se')(x, phase)
    x = QConvBN(spec.out, name='project', **self.conv)(x, phase)
    if spec.stride == 1 and shortcut.shape[-1] == spec.out:
      x = quantize(x + shortcut, 'add', phase, decay)
    return x


class QSqueezeExcite(nn.Module):
  """`blocks.SqueezeExcite`, quantization-aware: pool -> dense+ReLU -> dense -> gate -> multiply,
  each requantized as TFLite's MEAN, FULLY_CONNECTED/CONV_2D, ADD, MUL kernels do."""
  squeeze: int
  gate: str
  range_decay: float

  @nn.compact
  def __call__(self, x: jax.Array, phase: Phase) -> jax.Array:
    decay = self.range_decay
    s = quantize(jnp.mean(x, axis=(1, 2), keepdims=True), 'pool', phase, decay)
    s = QDense(self.squeeze, 'relu', decay, name='reduce')(s, phase)
    s = QDense(x.shape[-1], None, decay, name='expand')(s, phase)
    return quantize(x * qat_layers.gate(s, self.gate, phase, decay), 'scale', phase, decay)


def init_variables(model: QATMobileNetV3, rng: jax.Array, image_size: Tuple[int, int],
                   float_variables: Variables = None) -> Variables:
  """{'params', 'batch_stats', 'quant_stats'} for (1, H, W, 3) inputs; the float model's
  variables (e.g. a checkpoint) replace the fresh params and statistics when given."""
  variables = dict(model.init(rng, jnp.zeros((1, *image_size, 3), jnp.float32)))
  if float_variables is not None:
    variables.update(params=float_variables['params'],
                     batch_stats=float_variables['batch_stats'])
  return variables

