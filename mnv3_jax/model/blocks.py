"""The blocks of MobileNetV3 as the paper draws them: conv-BN-act, squeeze-and-excite, the bneck.

All tensors are NHWC. Parameters are float32; `dtype` is the compute dtype. The layers come from
`mnv3_jax.ops`: 1x1 convolutions are matmuls over the channel axis (`Pointwise`, the param layout
of `nn.Dense`), BatchNorm has flax's variables and a closed-form backward pass, the depthwise conv
has interchangeable implementations (`depthwise_impl`). These blocks compute the network only; the
fused CPU inference form is a separate pass over their variables (`model.fused`).
"""
from typing import Callable, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
from flax import linen as nn

from mnv3_jax import defaults
from mnv3_jax.ops.activations import hard_sigmoid
from mnv3_jax.ops import batchnorm, depthwise, pointwise
from mnv3_jax.ops import conv as conv_lib


def make_divisible(value: float, divisor: int = 8) -> int:
  """Rounds `value` to the nearest multiple of `divisor`, never going below 90% of it.

  This is `_make_divisible` / `_depth` of the official TF and Keras code, with min_value = divisor.
  """
  new_value = max(divisor, int(value + divisor / 2) // divisor * divisor)
  if new_value < 0.9 * value:
    new_value += divisor
  return new_value


def conv_kernel_init():
  """He-normal with fan-out, as torchvision and timm initialise MobileNetV3 convs."""
  return nn.initializers.variance_scaling(2.0, 'fan_out', 'truncated_normal')


def same_padding(size: int, kernel: int, stride: int) -> Tuple[int, int]:
  """TF "SAME" padding (low, high) of one spatial dimension: the extra pixel goes at the end."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def spatial_padding(shape: Sequence[int], kernel: int, stride: int, padding: str,
                    dilation: int = 1) -> Tuple[Tuple[int, int], Tuple[int, int]]:
  """Padding of the H and W axes of an NHWC `shape` for a kxk conv with `dilation`.

  padding: 'same' (TensorFlow's, asymmetric at stride 2 on even inputs) or 'symmetric'
  ((k-1)//2 * dilation on both sides, as PyTorch models do). Both are computed for the dilated
  kernel's extent (k - 1) * dilation + 1.
  """
  if padding == 'symmetric':
    return ((kernel - 1) // 2 * dilation,) * 2, ((kernel - 1) // 2 * dilation,) * 2
  span = (kernel - 1) * dilation + 1
  return same_padding(shape[1], span, stride), same_padding(shape[2], span, stride)


_BN_MOMENTUM, _BN_EPSILON = defaults.MODEL['bn_momentum'], defaults.MODEL['bn_epsilon']


class ConvBN(nn.Module):
  """Convolution (no bias) -> BatchNorm -> activation.

  (N, H, W, C) -> (N, H/stride, W/stride, features).

  kernel_size 1 (stride 1) is a matmul over channels; `depthwise=True` makes a depthwise kxk conv
  (features = C), dilated by `dilation`; otherwise a dense kxk conv (the stem, dilation 1 only). Activation None means linear (the bneck's
  projection). `padding` is 'same' (TensorFlow's) or 'symmetric' (PyTorch's).
  """
  features: int
  kernel_size: int = 1
  stride: int = 1
  depthwise: bool = False
  activation: Optional[Callable[[jax.Array], jax.Array]] = None
  bn_momentum: float = _BN_MOMENTUM
  bn_epsilon: float = _BN_EPSILON
  padding: str = 'same'
  depthwise_impl: str = defaults.MODEL['depthwise_impl']
  dtype: jnp.dtype = jnp.float32
  dilation: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if self.dilation != 1 and not self.depthwise:
      raise ValueError(f'ConvBN dilation {self.dilation!r} not allowed for a dense or 1x1 conv; '
                       'allowed: 1 (dilation is for depthwise convs).')
    if self.depthwise:
      pads = spatial_padding(x.shape, self.kernel_size, self.stride, self.padding, self.dilation)
      x = depthwise.DepthwiseConv(self.kernel_size, self.stride, pads, impl=self.depthwise_impl,
                                  dtype=self.dtype, dilation=self.dilation, name='conv')(x)
    elif self.kernel_size == 1 and self.stride == 1:
      x = pointwise.Pointwise(self.features, kernel_init=conv_kernel_init(), dtype=self.dtype,
                              name='conv')(x)
    else:
      pads = spatial_padding(x.shape, self.kernel_size, self.stride, self.padding)
      x = conv_lib.Conv(self.features, self.kernel_size, self.stride, pads,
                        kernel_init=conv_kernel_init(), dtype=self.dtype, name='conv')(x)
    x = batchnorm.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                            epsilon=self.bn_epsilon, dtype=self.dtype, name='bn')(x)
    return x if self.activation is None else self.activation(x)


class SqueezeExcite(nn.Module):
  """Squeeze-and-excite: global pool -> 1x1 (bias) to `squeeze` -> ReLU -> 1x1 (bias) -> gate ->
  scale.

  (N, H, W, C) -> (N, H, W, C). The squeeze width is make_divisible(C / 4) in MobileNetV3.
  """
  squeeze: int
  gate: Callable[[jax.Array], jax.Array] = hard_sigmoid
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = nn.relu(nn.Dense(self.squeeze, dtype=self.dtype, name='reduce')(s))
    s = self.gate(nn.Dense(x.shape[-1], dtype=self.dtype, name='expand')(s))
    return x * s


class InvertedResidual(nn.Module):
  """The bneck: [1x1 expand -> BN -> act] -> kxk depthwise -> BN -> act -> [SE] -> 1x1 project
  -> BN.

  The expansion conv is skipped when `expand` is False (the first bneck of both networks in the
  official code); the residual is added when stride is 1 and input and output widths agree.
  (N, H, W, C_in) -> (N, H/stride, W/stride, out).

  Dense tasks: `dilation` > 1 makes the depthwise conv atrous and run at stride 1 in place of
  `stride` (torchvision's `dilated=True`): (N, H, W, C_in) -> (N, H, W, out); the residual rule
  still reads `stride`. `return_expanded` also returns the expansion conv's output (after BN and
  activation; the input when there is none): (out, expanded), e.g. SSDLite's C4.
  """
  kernel_size: int
  expanded: int
  out: int
  stride: int
  activation: Callable[[jax.Array], jax.Array]
  expand: bool = True
  se_squeeze: Optional[int] = None
  se_gate: Callable[[jax.Array], jax.Array] = hard_sigmoid
  bn_momentum: float = _BN_MOMENTUM
  bn_epsilon: float = _BN_EPSILON
  padding: str = 'same'
  depthwise_impl: str = defaults.MODEL['depthwise_impl']
  dtype: jnp.dtype = jnp.float32
  dilation: int = 1
  return_expanded: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool):
    norm = dict(bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon, dtype=self.dtype)
    shortcut = x
    if self.expand:
      x = ConvBN(self.expanded, activation=self.activation, name='expand', **norm)(x, train)
    expanded = x
    x = ConvBN(x.shape[-1], self.kernel_size, 1 if self.dilation > 1 else self.stride,
               depthwise=True, activation=self.activation, padding=self.padding,
               depthwise_impl=self.depthwise_impl, dilation=self.dilation, name='depthwise',
               **norm)(x, train)
    if self.se_squeeze:
      x = SqueezeExcite(self.se_squeeze, self.se_gate, dtype=self.dtype, name='se')(x)
    x = ConvBN(self.out, name='project', **norm)(x, train)
    if self.stride == 1 and shortcut.shape[-1] == self.out:
      x = x + shortcut
    return (x, expanded) if self.return_expanded else x
