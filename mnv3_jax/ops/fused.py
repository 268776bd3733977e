"""Inference ops that fuse BatchNorm and activation into a convolution: one pass over memory.

- `fused_depthwise_conv`: the previous layer's BatchNorm and activation applied to the input,
  the depthwise conv, this layer's BatchNorm and activation, and optionally the per-image
  channel sums of the output (the squeeze-and-excite pool), in one native kernel
  (`csrc/depthwise_cpu.cc`).
- `fused_conv`: the stem, a dense kxk conv with its BatchNorm and activation applied before the
  output is stored (`csrc/conv_cpu.cc`). XLA CPU's convolution is slow with 3 input channels:
  the 224x224 stem at batch 32 took ~28 ms on 2 cores, a quarter of Small's inference.
Without the native kernels (other backends, other dtypes, activations the kernels lack) they
compute the same as plain XLA ops. Gradients, when asked for, are those of the unfused ops.
The fusion pass `mnv3_jax.model.fused` calls these; the canonical blocks never do.
"""
from typing import Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from mnv3_jax.ops import activations, conv, depthwise
from mnv3_jax.parallel import sharding

Padding = depthwise.Padding
# v -> activation(v * scale + shift) per channel: scale and shift (C,) float32.
Affine = Tuple[jax.Array, jax.Array, Callable[[jax.Array], jax.Array]]
# Activations the native kernels apply themselves (codes of csrc/cpu_common.h); -1 = none.
NATIVE_ACTIVATIONS = {activations.identity: 0, nn.relu: 1, activations.hard_swish: 2}


def _native_dtype(x: jax.Array) -> bool:
  return any(x.dtype == d for d in depthwise.NATIVE_DTYPES)


def _apply(affine: Optional[Affine], x: jax.Array) -> jax.Array:
  if affine is None:
    return x
  scale, shift, activation = affine   # the map in float32, as the native kernels do
  return activation((x.astype(jnp.float32) * scale + shift).astype(x.dtype))


def _native_forward_unfused_grad(native_fn, unfused_fn, *args):
  """native_fn(*args), differentiated as unfused_fn (the same function in XLA ops)."""
  fn = jax.custom_vjp(native_fn)
  fn.defvjp(lambda *a: (fn(*a), a), lambda a, dy: jax.vjp(unfused_fn, *a)[1](dy))
  return fn(*args)


def _with(affine: Optional[Affine], arrays) -> Optional[Affine]:
  return None if affine is None else (*arrays, affine[2])


def _depthwise_reference(x, kernel, pre, post, stride, padding, impl):
  y = _apply(post, depthwise.depthwise_conv(_apply(pre, x), kernel, stride, padding, impl))
  return y, jnp.sum(y.astype(jnp.float32), axis=(1, 2))


def _depthwise_native(x, kernel, pre, post, stride, padding):
  channels = x.shape[-1]
  ones, zeros = jnp.ones((channels,), jnp.float32), jnp.zeros((channels,), jnp.float32)
  args, codes = [], []
  for affine in (pre, post):
    scale, shift, activation = affine or (ones, zeros, None)
    args.append((scale.astype(jnp.float32), shift.astype(jnp.float32)))
    codes.append(np.int64(-1 if affine is None else NATIVE_ACTIVATIONS[activation]))
  k = kernel.shape[0]

  def run(x, pre_scale, pre_shift, kernel, post_scale, post_shift):   # per device: per_shard
    out = (x.shape[0], depthwise.out_size(x.shape[1], padding[0], k, stride),
           depthwise.out_size(x.shape[2], padding[1], k, stride), channels)
    call = jax.ffi.ffi_call('Mnv3DepthwiseFusedForward', (
        jax.ShapeDtypeStruct(out, x.dtype),
        jax.ShapeDtypeStruct((x.shape[0], channels), jnp.float32)))
    return call(x, pre_scale, pre_shift, kernel, post_scale, post_shift, pre_act=codes[0],
                post_act=codes[1], **depthwise.native_attrs(k, stride, padding))

  return sharding.per_shard(run, (x,), (*args[0], kernel.astype(jnp.float32), *args[1]))


def fused_depthwise_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding,
                         impl: str, pre: Optional[Affine] = None,
                         post: Optional[Affine] = None, pool: bool = False):
  """y = post(depthwise_conv(pre(x))): (N, H, W, C) -> (N, Ho, Wo, C); kernel (k, k, 1, C).

  pre / post: (scale (C,), shift (C,), activation) or None; padding applies to pre(x) (zeros).
  impl: a `depthwise.IMPLS` name; the native kernel runs where it resolves to 'native'.
  With `pool`, returns (y, sums): sums (N, C) float32 = y summed over Ho and Wo (computed from
  y before its rounding to x's dtype on the native path).
  """
  impl = depthwise.resolve_impl(impl)
  padding = depthwise.check_args(x, kernel, stride, padding)
  stride = int(stride)
  native = (impl == 'native' and _native_dtype(x) and
            all(a is None or a[2] in NATIVE_ACTIVATIONS for a in (pre, post)))
  if not native:
    y, sums = _depthwise_reference(x, kernel, pre, post, stride, padding, impl)
  else:
    y, sums = _native_forward_unfused_grad(
        lambda x, k, a, b: _depthwise_native(x, k, _with(pre, a), _with(post, b), stride,
                                             padding),
        lambda x, k, a, b: _depthwise_reference(x, k, _with(pre, a), _with(post, b), stride,
                                                padding, impl),
        x, kernel, pre and pre[:2], post and post[:2])
  return (y, sums) if pool else y


def _stem_reference(x, kernel, post, stride, padding):
  return _apply(post, conv.conv(x, kernel, stride, padding))


def _stem_native(x, kernel, scale, shift, code, stride, padding):
  k = kernel.shape[0]

  def run(x, kernel, scale, shift):   # per device on a sharded batch: `sharding.per_shard`
    out = (x.shape[0], (x.shape[1] + sum(padding[0]) - k) // stride + 1,
           (x.shape[2] + sum(padding[1]) - k) // stride + 1, kernel.shape[3])
    call = jax.ffi.ffi_call('Mnv3ConvFusedForward', jax.ShapeDtypeStruct(out, x.dtype))
    return call(x, kernel, scale, shift, s=np.int64(stride), pt=np.int64(padding[0][0]),
                pl=np.int64(padding[1][0]), post_act=np.int64(code))

  return sharding.per_shard(run, (x,), (kernel.astype(jnp.float32), scale.astype(jnp.float32),
                                        shift.astype(jnp.float32)))


def fused_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding, native: bool,
               post: Affine) -> jax.Array:
  """post(conv(x, kernel)): NHWC (N, H, W, Ci) * (k, k, Ci, Co) -> (N, Ho, Wo, Co).

  native: run the C++ kernel where it applies (float32 / bfloat16, square kernels up to 7x7,
  padding below k, an activation of NATIVE_ACTIVATIONS); it must have been built
  (`ops.native.native_depthwise()`).
  """
  k = kernel.shape[0]
  code = NATIVE_ACTIVATIONS.get(post[2])
  if not (native and code is not None and kernel.shape[1] == k and k <= 7 and _native_dtype(x)
          and all(0 <= p < k for pads in padding for p in pads)):
    return _stem_reference(x, kernel, post, stride, padding)
  return _native_forward_unfused_grad(
      lambda x, w, a, b: _stem_native(x, w, a, b, code, stride, padding),
      lambda x, w, a, b: _stem_reference(x, w, (a, b, post[2]), stride, padding),
      x, kernel, post[0], post[1])
