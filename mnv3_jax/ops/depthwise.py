"""Depthwise kxk convolution with numerically equal implementations.

- 'conv': `lax.conv_general_dilated` with `feature_group_count = C`, the right lowering on TPU/GPU.
  XLA's CPU grouped convolution is 35-100x slower than oneDNN's, hence the two below.
- 'shifted': pure XLA. The forward is a sum over the k*k taps of strided slices times per-channel
  weights (one fused elementwise loop). A custom VJP keeps only the input for the backward pass
  (autodiff would save all k*k shifted copies) and computes the input gradient the same way, as
  a correlation of the (dilated, padded) output gradient with the flipped kernel.
- 'native': the same custom VJP with forward, input gradient and weight gradient done by C++
  kernels (`csrc/depthwise_cpu.cc`, built on first use by `ops.native`). The weight
  gradient, a reduction over N*H*W per tap, is where XLA formulations lose: they materialise a
  shifted copy of the input per tap. CPU only; float32 and bfloat16 (other dtypes use 'shifted').
- 'auto': 'native' on CPU when the kernels build, else 'shifted'; 'conv' on other backends
  (decided at trace time from the default backend).

The inference form with BatchNorms, activations and the SE pool inside the kernel is
`ops.fused.fused_depthwise_conv`.

The kernel has Flax's grouped-conv layout (k, k, 1, C) in every implementation, so checkpoints
do not depend on the choice.

Dilation (atrous depthwise conv, for dense tasks at output stride 16): `dilation` d > 1 spaces the
taps d pixels apart (an effective kernel of (k - 1) * d + 1); it always runs on 'conv'
(`rhs_dilation`), whatever `impl` says: the other implementations are for dilation 1.
"""
import functools
from typing import Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax import lax

from mnv3_jax.ops import native
from mnv3_jax.parallel import sharding

IMPLS = ('auto', 'conv', 'shifted', 'native')
NATIVE_DTYPES = (jnp.float32, jnp.bfloat16)

Padding = Tuple[Tuple[int, int], Tuple[int, int]]


def resolve_impl(impl: str) -> str:
  """Maps 'auto' to the implementation that is fast on the default backend.

  Raises ValueError for an unknown name, or for 'native' where it cannot run (not on CPU, or
  the kernels could not be built).
  """
  if impl not in IMPLS:
    raise ValueError(f'Unknown depthwise_impl {impl!r}; allowed: {list(IMPLS)}.')
  on_cpu = jax.default_backend() == 'cpu'
  if impl == 'auto':
    if not on_cpu:
      return 'conv'
    return 'native' if native.native_depthwise() else 'shifted'
  if impl == 'native' and not (on_cpu and native.native_depthwise()):
    raise ValueError("depthwise_impl 'native' needs the CPU backend and a C++ compiler to build "
                     "mnv3_jax/ops/csrc/depthwise_cpu.cc; use 'auto', 'shifted' or 'conv'.")
  return impl


def out_size(size: int, pad: Tuple[int, int], k: int, stride: int) -> int:
  return (size + pad[0] + pad[1] - k) // stride + 1


def _taps(xp: jax.Array, kernel: jax.Array, stride: int, out_h: int, out_w: int) -> jax.Array:
  """sum_{i,j} xp[:, i + stride*ho, j + stride*wo, :] * kernel[i, j, 0]: (N, out_h, out_w, C)."""
  k = kernel.shape[0]
  out = None
  for i in range(k):
    for j in range(k):
      tap = lax.slice(xp, (0, i, j, 0),
                      (xp.shape[0], i + (out_h - 1) * stride + 1, j + (out_w - 1) * stride + 1,
                       xp.shape[3]), (1, stride, stride, 1))
      term = tap * kernel[i, j, 0]
      out = term if out is None else out + term
  return out


def _shifted_forward(x, kernel, stride, padding):
  k = kernel.shape[0]
  xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
  return _taps(xp, kernel, stride, out_size(x.shape[1], padding[0], k, stride),
               out_size(x.shape[2], padding[1], k, stride))


def _shifted_input_grad(dy, kernel, stride, padding, in_shape):
  """Input gradient: the output gradient, dilated by the stride and padded, correlated with the
  flipped kernel."""
  k = kernel.shape[0]
  (top, _), (left, _) = padding
  h, w = in_shape[1:3]
  ho, wo = dy.shape[1:3]
  pads = ((0, 0, 0), (k - 1 - top, h + top - (ho - 1) * stride - 1, stride - 1),
          (k - 1 - left, w + left - (wo - 1) * stride - 1, stride - 1), (0, 0, 0))
  dyp = lax.pad(dy, jnp.zeros((), dy.dtype), pads)
  return _taps(dyp, kernel[::-1, ::-1], 1, h, w)


def _shifted_weight_grad(x, dy, k, stride, padding):
  xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
  ho, wo = dy.shape[1:3]
  sums = []
  for i in range(k):
    for j in range(k):
      tap = lax.slice(xp, (0, i, j, 0), (xp.shape[0], i + (ho - 1) * stride + 1,
                                         j + (wo - 1) * stride + 1, xp.shape[3]),
                      (1, stride, stride, 1))
      sums.append(jnp.sum(tap.astype(jnp.float32) * dy.astype(jnp.float32), axis=(0, 1, 2)))
  return jnp.stack(sums).reshape(k, k, 1, -1)


def native_attrs(k, stride, padding):
  return dict(k=np.int64(k), s=np.int64(stride), pt=np.int64(padding[0][0]),
              pl=np.int64(padding[1][0]))


# The native calls run per device on a batch sharded over a mesh (`sharding.per_shard`): their
# output shapes come from the (per-device) arguments.
def _native_forward(x, kernel, stride, padding):
  k = kernel.shape[0]

  def run(x, kernel):
    out = (x.shape[0], out_size(x.shape[1], padding[0], k, stride),
           out_size(x.shape[2], padding[1], k, stride), x.shape[3])
    call = jax.ffi.ffi_call('Mnv3DepthwiseForward', jax.ShapeDtypeStruct(out, x.dtype))
    return call(x, kernel, **native_attrs(k, stride, padding))

  return sharding.per_shard(run, (x,), (kernel.astype(jnp.float32),))


def _native_input_grad(dy, kernel, stride, padding, in_shape):
  def run(dy, kernel):
    shape = (dy.shape[0], *in_shape[1:])
    call = jax.ffi.ffi_call('Mnv3DepthwiseInputGrad', jax.ShapeDtypeStruct(shape, dy.dtype))
    return call(dy, kernel, **native_attrs(kernel.shape[0], stride, padding))

  return sharding.per_shard(run, (dy,), (kernel.astype(jnp.float32),))


def _native_weight_grad(x, dy, k, stride, padding):
  def run(x, dy):
    per_image = jax.ShapeDtypeStruct((x.shape[0], k, k, 1, x.shape[3]), jnp.float32)
    return jax.ffi.ffi_call('Mnv3DepthwiseWeightGrad', per_image)(
        x, dy, **native_attrs(k, stride, padding))

  # Per-image sums stay batch-sharded; XLA sums each device's, then all-reduces (k*k*C floats).
  return jnp.sum(sharding.per_shard(run, (x, dy)), axis=0)


_PARTS = {
    'shifted': (_shifted_forward, _shifted_input_grad, _shifted_weight_grad),
    'native': (_native_forward, _native_input_grad, _native_weight_grad),
}


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _depthwise(x, kernel, stride, padding, impl):
  return _PARTS[impl][0](x, kernel, stride, padding)


def _depthwise_fwd(x, kernel, stride, padding, impl):
  return _depthwise(x, kernel, stride, padding, impl), (x, kernel)


def _depthwise_bwd(stride, padding, impl, residuals, dy):
  x, kernel = residuals
  _, input_grad, weight_grad = _PARTS[impl]
  dx = input_grad(dy, kernel, stride, padding, x.shape).astype(x.dtype)
  dk = weight_grad(x, dy, kernel.shape[0], stride, padding).astype(kernel.dtype)
  return dx, dk


_depthwise.defvjp(_depthwise_fwd, _depthwise_bwd)


def check_args(x: jax.Array, kernel: jax.Array, stride: int, padding: Sequence,
               dilation: int = 1) -> Padding:
  if x.ndim != 4:
    raise ValueError(f'Depthwise input must be NHWC (4-D); got shape {tuple(x.shape)}.')
  k = kernel.shape[0]
  if kernel.shape != (k, k, 1, x.shape[3]):
    raise ValueError(f'Depthwise kernel shape {tuple(kernel.shape)} not allowed for input '
                     f'{tuple(x.shape)}: expected (k, k, 1, {x.shape[3]}).')
  if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1:
    raise ValueError(f'Invalid depthwise stride {stride!r}; allowed: an integer >= 1.')
  if isinstance(dilation, bool) or not isinstance(dilation, (int, np.integer)) or dilation < 1:
    raise ValueError(f'Invalid depthwise dilation {dilation!r}; allowed: an integer >= 1.')
  span = (k - 1) * dilation + 1    # the dilated kernel's extent
  try:
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  except (TypeError, ValueError):
    pads = ()
  if len(pads) != 2 or min(min(p) for p in pads) < 0 or max(max(p) for p in pads) >= span:
    raise ValueError(f'Invalid depthwise padding {padding!r}; allowed: ((top, bottom), '
                     f'(left, right)) with each in [0, {span - 1}].')
  for size, pad in zip(x.shape[1:3], pads):
    if size + pad[0] + pad[1] < span:
      raise ValueError(f'Depthwise input {tuple(x.shape)} with padding {pads} is smaller '
                       f'than the {span}x{span} (dilated) kernel.')
  return pads


def depthwise_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding,
                   impl: str, dilation: int = 1) -> jax.Array:
  """Depthwise convolution of NHWC `x` (N, H, W, C) with `kernel` (k, k, 1, C).

  padding: ((top, bottom), (left, right)), each in [0, s - 1] with s = (k - 1) * dilation + 1,
  the dilated kernel's extent. Returns (N, Ho, Wo, C) in x's dtype with
  Ho = (H + top + bottom - s) // stride + 1 (likewise Wo). dilation > 1 runs on 'conv'.
  """
  impl = resolve_impl(impl)
  padding = check_args(x, kernel, stride, padding, dilation)
  stride, dilation = int(stride), int(dilation)
  if impl == 'conv' or dilation > 1:
    return lax.conv_general_dilated(
        x, kernel, (stride, stride), padding, rhs_dilation=(dilation, dilation),
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=x.shape[-1])
  if impl == 'native' and not any(x.dtype == d for d in NATIVE_DTYPES):
    impl = 'shifted'
  return _depthwise(x, kernel, stride, padding, impl)


class DepthwiseConv(nn.Module):
  """Depthwise kxk conv without bias: (N, H, W, C) -> (N, Ho, Wo, C); `padding` per H and W;
  `dilation` spaces the taps (see `depthwise_conv`)."""
  kernel_size: int
  stride: int
  padding: Padding
  impl: str = 'auto'
  dtype: jnp.dtype = jnp.float32
  dilation: int = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param(
        'kernel', nn.initializers.variance_scaling(2.0, 'fan_in', 'truncated_normal'),
        (self.kernel_size, self.kernel_size, 1, x.shape[-1]), jnp.float32)
    return depthwise_conv(x.astype(self.dtype), kernel.astype(self.dtype), self.stride,
                          self.padding, self.impl, self.dilation)
