"""The fused inference form of a MobileNetV3: a pass from (model, variables) to logits that equals
`model.apply(variables, x, train=False)` and reads each block's widest tensors once.

What it fuses, per block (the canonical blocks in `blocks.py` compute the same unfused):
- every BatchNorm becomes its per-channel map x * a + b (`batchnorm.fold`);
- the expansion's BatchNorm and activation, the depthwise conv, its BatchNorm and activation,
  and the squeeze-and-excite pool run as one op (`fused_ops.fused_depthwise_conv`);
- the SE gate scales the projection's input and the projection's BatchNorm scale is folded into
  its 1x1 weights, so the SE multiply and the BatchNorm cost no pass of their own;
- the stem runs its BatchNorm and activation inside the convolution (`ops.fused.fused_conv`).
With `native=True` those ops are the C++ CPU kernels (`ops/csrc`, one pass over memory); with
`native=False` they are plain XLA ops (XLA fuses the elementwise parts itself).

`inference_fn(model)` is what evaluation, benchmarks and the ablation notebooks call: the fused
form where the native kernels run (CPU), the canonical module elsewhere (TPU/GPU, where XLA
fuses BatchNorm into the convolutions already).
"""
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp

from mnv3_jax.model import activations, blocks, options
from mnv3_jax.model.mobilenet_v3 import BlockSpec, MobileNetV3
from mnv3_jax.model.tables import HS
from mnv3_jax.ops import batchnorm, depthwise, pointwise
from mnv3_jax.ops import fused as fused_ops
from mnv3_jax.ops.native import native_depthwise

Tree = Mapping[str, Any]


def native_available() -> bool:
  """True where the native CPU kernels run: the CPU backend, with the kernels built."""
  return jax.default_backend() == 'cpu' and native_depthwise()


class _Layers:
  """Folded views of one module's variables: its params `p` and BatchNorm statistics `s`."""

  def __init__(self, params: Tree, stats: Tree, epsilon: float, dtype: jnp.dtype):
    self.p, self.s, self.epsilon, self.dtype = params, stats, epsilon, dtype

  def sub(self, name: str) -> '_Layers':
    return _Layers(self.p[name], self.s.get(name, {}), self.epsilon, self.dtype)

  def bn(self, name: str):
    """(a, b): the folded BatchNorm of ConvBN `name`, float32 (C,)."""
    p, s = self.p[name]['bn'], self.s[name]['bn']
    return batchnorm.fold(p['scale'], p['bias'], s['mean'], s['var'], self.epsilon)

  def kernel(self, name: str) -> jax.Array:
    return self.p[name]['conv']['kernel']

  def dense(self, name: str, x: jax.Array) -> jax.Array:
    """nn.Dense `name` with bias, computed in the compute dtype as flax does."""
    p = self.p[name]
    return x.astype(self.dtype) @ p['kernel'].astype(self.dtype) + p['bias'].astype(self.dtype)


def _pointwise_bn(layers: _Layers, name: str, x: jax.Array, act=None,
                  gate: Optional[jax.Array] = None) -> jax.Array:
  """ConvBN `name` (1x1): the BatchNorm scale folded into the weights (float32), `gate` (N, Cin)
  scaling each image's input channels."""
  a, b = layers.bn(name)
  kernel = (layers.kernel(name) * a).astype(layers.dtype)
  if gate is not None:
    x = x * gate.astype(x.dtype)[:, None, None, :]
  y = (pointwise.pointwise(x, kernel).astype(jnp.float32) + b).astype(layers.dtype)
  return y if act is None else act(y)


def _bneck(layers: _Layers, spec: BlockSpec, x: jax.Array, gate_fn, padding: str,
           impl: str) -> jax.Array:
  """InvertedResidual of `spec` on x (N, H, W, Cin) -> (N, H', W', out)."""
  act = activations.get_activation(spec.activation)
  shortcut, pre = x, None
  if spec.expand:   # its BatchNorm and activation run inside the depthwise op
    x = pointwise.pointwise(x, layers.kernel('expand').astype(layers.dtype))
    pre = (*layers.bn('expand'), act)
  pads = blocks.spatial_padding(x.shape, spec.kernel, spec.stride, padding)
  y = fused_ops.fused_depthwise_conv(
      x, layers.kernel('depthwise').astype(layers.dtype), spec.stride, pads, impl, pre=pre,
      post=(*layers.bn('depthwise'), act), pool=spec.se_squeeze is not None)
  gate = None
  if spec.se_squeeze is not None:
    y, sums = y
    se = layers.sub('se')
    pooled = (sums / (y.shape[1] * y.shape[2])).astype(layers.dtype)
    gate = gate_fn(se.dense('expand', jax.nn.relu(se.dense('reduce', pooled))))
  x = _pointwise_bn(layers, 'project', y, gate=gate)
  if spec.stride == 1 and shortcut.shape[-1] == spec.out:
    x = x + shortcut
  return x


def fused_apply(model: MobileNetV3, variables: Tree, images: jax.Array,
                native: Optional[bool] = None) -> jax.Array:
  """Logits of `model` at inference, fused: images (N, H, W, 3) in [-1, 1] -> float32 (N, classes).

  Equals `model.apply(variables, images, train=False)` up to float rounding. native: use the C++
  CPU kernels (default: where they run, `native_available()`); False gives pure XLA ops.
  """
  options.check_input_shape(images.shape)
  native = native_available() if native is None else native
  impl = 'native' if native else depthwise.resolve_impl(model.depthwise_impl)
  impl = 'shifted' if impl == 'native' and not native else impl
  dtype = options.compute_dtype(model.dtype)
  root = _Layers(variables['params'], variables['batch_stats'], model.bn_epsilon, dtype)
  hs = activations.get_activation(model.activation_name(HS))
  x = model.prepare_input(images)
  pads = blocks.spatial_padding(x.shape, 3, 2, model.padding)
  x = fused_ops.fused_conv(x, root.kernel('stem').astype(dtype), 2, pads, native,
                           post=(*root.bn('stem'), hs))
  gate_fn = activations.get_gate(model.se_gate)
  for i, spec in enumerate(model.block_specs()):
    x = _bneck(root.sub(f'block_{i}'), spec, x, gate_fn, model.padding, impl)
  return _head(model, root, x, hs, impl)


def _head(model: MobileNetV3, root: _Layers, x: jax.Array, act, impl: str) -> jax.Array:
  x = _pointwise_bn(root, 'head_conv', x, act)
  if model.last_stage == 'v2':
    pads = blocks.spatial_padding(x.shape, 3, 1, model.padding)
    x = fused_ops.fused_depthwise_conv(x, root.kernel('head_depthwise').astype(root.dtype), 1,
                                       pads, impl, post=(*root.bn('head_depthwise'), act))
    x = _pointwise_bn(root, 'head_project', x)
    x = jnp.mean(_pointwise_bn(root, 'pre_logits', x, act), axis=(1, 2))
  else:
    x = act(root.dense('pre_logits', jnp.mean(x, axis=(1, 2))))
  return root.dense('logits', x).astype(jnp.float32)


def inference_fn(model) -> Callable[[Tree, jax.Array], jax.Array]:
  """(variables, images) -> float32 logits at inference: fused where the native kernels run,
  else the canonical module (and for any other flax module taking `(x, train=False)`)."""
  if isinstance(model, MobileNetV3) and native_available():
    return lambda variables, images: fused_apply(model, variables, images, native=True)
  return lambda variables, images: model.apply(variables, images, train=False)
