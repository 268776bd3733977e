"""Dense kxk convolution (the stem) whose inference form runs its BatchNorm and activation inside a
native CPU kernel.

XLA CPU's convolution is slow with 3 input channels: the 224x224 stem of MobileNetV3 at batch 32
took ~28 ms on 2 cores, a quarter of Small's inference. `csrc/conv_cpu.cc` (built with the
depthwise kernels by `ops.native`) computes it with 8-wide vectors over output channels and
applies the folded BatchNorm and the activation before storing, so the output is written once.
Training, other backends and activations the kernel lacks use `lax.conv_general_dilated` (the op
`flax.linen.Conv` emits); gradients are always those of that op.
"""
from typing import Callable, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax import lax

from mnv3_jax.ops import depthwise
from mnv3_jax.parallel import sharding

Padding = Tuple[Tuple[int, int], Tuple[int, int]]


def conv(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding) -> jax.Array:
  """NHWC (N, H, W, Ci) * HWIO (k, k, Ci, Co) -> (N, Ho, Wo, Co), no bias."""
  return lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _reference(x, kernel, post, stride, padding):
  scale, shift, activation = post
  return activation((conv(x, kernel, stride, padding).astype(jnp.float32) * scale + shift)
                    .astype(x.dtype))


def _native(x, kernel, scale, shift, code, stride, padding):
  k = kernel.shape[0]

  def run(x, kernel, scale, shift):   # per device on a sharded batch: `sharding.per_shard`
    out = (x.shape[0], (x.shape[1] + sum(padding[0]) - k) // stride + 1,
           (x.shape[2] + sum(padding[1]) - k) // stride + 1, kernel.shape[3])
    call = jax.ffi.ffi_call('Mnv3ConvFusedForward', jax.ShapeDtypeStruct(out, x.dtype))
    return call(x, kernel, scale, shift, s=np.int64(stride), pt=np.int64(padding[0][0]),
                pl=np.int64(padding[1][0]), post_act=np.int64(code))

  return sharding.per_shard(run, (x,), (kernel.astype(jnp.float32), scale.astype(jnp.float32),
                                        shift.astype(jnp.float32)))


def fused_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding, impl: str,
               post: Tuple[jax.Array, jax.Array, Callable[[jax.Array], jax.Array]]) -> jax.Array:
  """activation(conv(x, kernel) * scale + shift) with post = (scale (Co,), shift (Co,), activation).

  impl: a `depthwise.IMPLS` name; the native kernel runs where the depthwise one would ('native'
  after resolution), for float32 / bfloat16 and kernels up to 7x7 with padding below k.
  """
  impl = depthwise.resolve_impl(impl)
  k = kernel.shape[0]
  code = depthwise.NATIVE_ACTIVATIONS.get(post[2])
  native = (impl == 'native' and code is not None and kernel.shape[1] == k and k <= 7 and
            any(x.dtype == d for d in depthwise.NATIVE_DTYPES) and
            all(0 <= p < k for pads in padding for p in pads))
  if not native:
    return _reference(x, kernel, post, stride, padding)

  @jax.custom_vjp
  def fused(x, kernel, scale, shift):
    return _native(x, kernel, scale, shift, code, stride, padding)

  def fwd(*args):
    return fused(*args), args

  def bwd(args, dy):
    return jax.vjp(lambda x, w, a, b: _reference(x, w, (a, b, post[2]), stride, padding),
                   *args)[1](dy)

  fused.defvjp(fwd, bwd)
  return fused(x, kernel, post[0], post[1])


class Conv(nn.Module):
  """kxk conv without bias, the params of `nn.Conv` ('kernel' (k, k, Ci, features)).

  (N, H, W, Ci) -> (N, Ho, Wo, features); `padding` ((top, bottom), (left, right)).
  """
  features: int
  kernel_size: int
  stride: int
  padding: Padding
  kernel_init: Callable = nn.initializers.lecun_normal()
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    kernel = self.param('kernel', self.kernel_init, (k, k, x.shape[-1], self.features),
                        jnp.float32)
    return conv(x.astype(self.dtype), kernel.astype(self.dtype), self.stride, self.padding)
