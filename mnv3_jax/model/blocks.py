"""Building blocks of MobileNetV3: activations, conv-BN-act, squeeze-and-excite, the bneck block.

All tensors are NHWC. Parameters are float32; `dtype` is the compute dtype.
1x1 convolutions are matmuls over the channel axis (`pointwise.Pointwise`, the param layout of
`nn.Dense`), 1.5-2x faster than `lax.conv` on CPU; BatchNorm is `batchnorm.BatchNorm` (flax's
variables, a closed-form backward pass).
"""
from typing import Callable, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
from flax import linen as nn

from mnv3_jax.ops import batchnorm
from mnv3_jax.ops import depthwise
from mnv3_jax.ops import pointwise
from mnv3_jax.ops import conv as conv_lib
from mnv3_jax.ops.depthwise import Affine
from mnv3_jax.model.activations import (  # pylint: disable=unused-import  (re-exported)
    ACTIVATIONS, GATES, get_activation, get_gate, hard_sigmoid, hard_swish, identity)


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


def spatial_padding(shape: Sequence[int], kernel: int, stride: int,
                    padding: str) -> Tuple[Tuple[int, int], Tuple[int, int]]:
  """Padding of the H and W axes of an NHWC `shape` for a kxk conv.

  padding: 'same' (TensorFlow's, asymmetric at stride 2 on even inputs) or 'symmetric'
  ((k-1)//2 on both sides, as PyTorch models do).
  """
  if padding == 'symmetric':
    return ((kernel - 1) // 2,) * 2, ((kernel - 1) // 2,) * 2
  return same_padding(shape[1], kernel, stride), same_padding(shape[2], kernel, stride)


class ConvBN(nn.Module):
  """Convolution (no bias) -> BatchNorm -> activation.

  kernel_size 1 is a matmul; `depthwise=True` makes a depthwise kxk conv (channels unchanged);
  otherwise a dense kxk conv (the stem). Activation None means linear (the bneck projection).

  Inference fusion (train=False only): with `defer` the layer returns (conv output, (a, b)),
  leaving its BatchNorm (x * a + b) and activation to the next layer; a depthwise layer takes
  `pre` = (a, b, activation) and applies it, its own BatchNorm and its activation inside the
  convolution (`depthwise.fused_depthwise_conv`), and with `pool` also returns the per-image
  channel sums of its output (N, C). A 1x1 layer folds its BatchNorm scale into the weights and,
  given `gate` (N, Cin), the per-image input scaling of squeeze-and-excite too; a dense kxk layer
  (the stem) runs its BatchNorm and activation inside the convolution (`mnv3_jax.conv.fused_conv`).
  """
  features: int
  kernel_size: int = 1
  stride: int = 1
  depthwise: bool = False
  activation: Optional[Callable[[jax.Array], jax.Array]] = None
  bn_momentum: float = 0.997
  bn_epsilon: float = 1e-3
  padding: str = 'same'
  depthwise_impl: str = 'conv'
  dtype: jnp.dtype = jnp.float32
  defer: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, pre: Optional[Affine] = None, pool: bool = False,
               gate: Optional[jax.Array] = None):
    if (pre is not None or pool) and (train or not self.depthwise):
      raise ValueError('ConvBN: `pre` and `pool` are for depthwise layers at inference only.')
    pointwise_layer = self.kernel_size == 1 and self.stride == 1 and not self.depthwise
    if gate is not None and (train or not pointwise_layer or self.defer):
      raise ValueError('ConvBN: `gate` is for 1x1 layers at inference only.')
    fuse = not train
    bn = batchnorm.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                             epsilon=self.bn_epsilon, dtype=self.dtype, fold=fuse, name='bn')
    activation = self.activation or identity
    if self.depthwise:
      pads = spatial_padding(x.shape, self.kernel_size, self.stride, self.padding)
      conv = depthwise.DepthwiseConv(self.kernel_size, self.stride, pads,
                                     impl=self.depthwise_impl, dtype=self.dtype, name='conv')
      if fuse:
        return conv(x, pre=pre, post=(*bn(x), activation), pool=pool)
      x = conv(x)
    elif pointwise_layer:
      conv = pointwise.Pointwise(self.features, kernel_init=conv_kernel_init(), dtype=self.dtype,
                                 name='conv')
      if fuse and not self.defer:   # BatchNorm's scale folded into the weights
        a, b = bn(jnp.zeros((self.features,), self.dtype))   # (a, b) only depend on the width
        y = conv(x, scale=a, gate=gate)
        return activation((y.astype(jnp.float32) + b).astype(y.dtype))
      x = conv(x)
    else:
      pads = spatial_padding(x.shape, self.kernel_size, self.stride, self.padding)
      dense = conv_lib.Conv(self.features, self.kernel_size, self.stride, pads,
                            kernel_init=conv_kernel_init(), impl=self.depthwise_impl,
                            dtype=self.dtype, name='conv')
      if fuse and not self.defer:   # BatchNorm and activation inside the native kernel
        return dense(x, post=(*bn(jnp.zeros((self.features,), self.dtype)), activation))
      x = dense(x)
    if fuse:
      return x, bn(x)
    return activation(bn(x))


class SqueezeExcite(nn.Module):
  """Squeeze-and-excite: global pool -> 1x1 (bias) to `squeeze` -> ReLU -> 1x1 (bias) -> gate -> scale.

  (N, H, W, C) -> (N, H, W, C). The squeeze width is make_divisible(C / 4) in MobileNetV3.
  """
  squeeze: int
  gate: Callable[[jax.Array], jax.Array] = hard_sigmoid
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, pooled: Optional[jax.Array] = None,
               gate_only: bool = False) -> jax.Array:
    """pooled: the mean of x over H and W (N, C), when already known. gate_only: return the
    gate (N, C) instead of the scaled x."""
    if pooled is None:
      s = jnp.mean(x, axis=(1, 2), keepdims=True)
    else:
      s = pooled.astype(x.dtype).reshape(x.shape[0], 1, 1, x.shape[-1])
    s = nn.Dense(self.squeeze, dtype=self.dtype, name='reduce')(s)
    s = nn.relu(s)
    s = self.gate(nn.Dense(x.shape[-1], dtype=self.dtype, name='expand')(s))
    return s.reshape(x.shape[0], x.shape[-1]) if gate_only else x * s


class InvertedResidual(nn.Module):
  """The bneck: [1x1 expand -> BN -> act] -> kxk depthwise -> BN -> act -> [SE] -> 1x1 project -> BN.

  The expansion conv is skipped when `expand` is False (the first bneck of both networks in the
  official code); the residual is added when stride is 1 and input and output widths agree.
  (N, H, W, C_in) -> (N, H/stride, W/stride, out).
  """
  kernel_size: int
  expanded: int
  out: int
  stride: int
  activation: Callable[[jax.Array], jax.Array]
  expand: bool = True
  se_squeeze: Optional[int] = None
  se_gate: Callable[[jax.Array], jax.Array] = hard_sigmoid
  bn_momentum: float = 0.997
  bn_epsilon: float = 1e-3
  padding: str = 'same'
  depthwise_impl: str = 'conv'
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    bn = dict(bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon, dtype=self.dtype)
    shortcut, pre = x, None
    if self.expand:
      x = ConvBN(self.expanded, activation=self.activation, defer=not train, name='expand',
                 **bn)(x, train)
      if not train:   # the expansion's BatchNorm and activation run inside the depthwise conv
        x, (a, b) = x
        pre = (a, b, self.activation)
    x = ConvBN(x.shape[-1], self.kernel_size, self.stride, depthwise=True,
               activation=self.activation, padding=self.padding,
               depthwise_impl=self.depthwise_impl, name='depthwise',
               **bn)(x, train, pre, pool=bool(self.se_squeeze) and not train)
    gate = None
    if self.se_squeeze:
      se = SqueezeExcite(self.se_squeeze, self.se_gate, dtype=self.dtype, name='se')
      if train:
        x = se(x)
      else:   # the pool comes from the depthwise kernel; the gate scales the projection's input
        x, sums = x
        gate = se(x, pooled=sums / (x.shape[1] * x.shape[2]), gate_only=True)
    x = ConvBN(self.out, name='project', **bn)(x, train, gate=gate)
    if self.stride == 1 and shortcut.shape[-1] == self.out:
      x = x + shortcut
    return x
