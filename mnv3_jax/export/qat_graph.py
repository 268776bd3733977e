"""The int8 TFLite model of a quantization-aware trained network, with the ranges it trained.

jax2tf turns a JAX forward into one StableHLO op, in which the TFLite converter cannot see fake
quantization. So the QAT network's deployed form (`QATMobileNetV3` with `Phase()`) is written
here in TensorFlow ops: BatchNorm folded into the weights, the weights already on their int8
per-channel grids (the converter's own symmetric per-channel quantization then reproduces them
exactly), and `tf.quantization.fake_quant_with_min_max_args` with the trained range at every
requantization point. The converter reads those as the tensors' quantization parameters
(quantization-aware conversion): no calibration runs, and what was trained is what ships.

The op sequence mirrors `compress.qat_model` and `compress.qat_layers` line by line; the export
test checks the converted model against the JAX QAT model on held-out images.
"""
from typing import Any, Dict

import jax
import numpy as np

from mnv3_jax.compress import qat_layers
from mnv3_jax.compress.fake_quant import fake_quant_weights
from mnv3_jax.compress.qat_model import QATMobileNetV3
from mnv3_jax.model import blocks
from mnv3_jax.model.tables import HS

Tree = Dict[str, Any]


class _Graph:
  """Emits the TF ops of one network's layers from its variables (numpy)."""

  def __init__(self, tf, variables: Tree, epsilon: float, padding: str):
    self.tf, self.epsilon, self.padding = tf, epsilon, padding
    self.params, self.stats = variables['params'], variables['batch_stats']
    self.ranges = variables['quant_stats']

  def quant(self, x, path: str):
    """fake_quant of x with the trained range 'quant_stats/<path>'."""
    node = self.ranges
    for part in path.split('/'):
      node = node[part]
    return self.tf.quantization.fake_quant_with_min_max_args(
        x, min=float(node['min']), max=float(node['max']), num_bits=8)

  def activate(self, y, activation, path: str):
    """`qat_layers.activate` in TF ops: the fused ReLUs, HARD_SWISH, or LOGISTIC * x."""
    tf = self.tf
    if activation is None or activation in qat_layers.FUSED_ACTIVATIONS:
      y = {None: y, 'relu': tf.nn.relu(y), 'relu6': tf.nn.relu6(y)}[activation]
      return self.quant(y, f'{path}/out')
    y = self.quant(y, f'{path}/pre')
    if activation == 'hard_swish':   # the converter's HARD_SWISH pattern
      return self.quant(y * tf.nn.relu6(y + 3.0) * (1.0 / 6.0), f'{path}/out')
    lo, hi = qat_layers.SIGMOID_RANGE
    gate = tf.quantization.fake_quant_with_min_max_args(tf.sigmoid(y), min=lo, max=hi)
    return self.quant(y * gate, f'{path}/out')

  def _node(self, tree: Tree, path: str) -> Tree:
    for part in path.split('/'):
      tree = tree[part]
    return tree

  def conv_bn(self, x, path: str, kernel_size=1, stride=1, depthwise=False, activation=None):
    """QConvBN `path`: folded, int8-grid weights; conv + bias; `activate`."""
    p, s = self._node(self.params, path), self._node(self.stats, path)
    fold = p['bn']['scale'] / np.sqrt(s['bn']['var'] + self.epsilon)
    kernel = np.asarray(fake_quant_weights(p['conv']['kernel'] * fold), np.float32)
    bias = (p['bn']['bias'] - s['bn']['mean'] * fold).astype(np.float32)
    pads = blocks.spatial_padding(x.shape, kernel_size, stride, self.padding)
    padding = 'SAME' if self.padding == 'same' else [[0, 0], *map(list, pads), [0, 0]]
    if depthwise:
      y = self.tf.nn.depthwise_conv2d(x, kernel.transpose(0, 1, 3, 2), [1, stride, stride, 1],
                                      padding)
    else:
      kernel = kernel.reshape(1, 1, *kernel.shape) if kernel.ndim == 2 else kernel
      y = self.tf.nn.conv2d(x, kernel, stride, padding)
    return self.activate(y + bias, activation, path)

  def dense(self, x, path: str, activation=None):
    """QDense `path` on (N, 1, 1, C) as a 1x1 CONV_2D (TFLite's matmul needs rank 2 inputs)."""
    p = self._node(self.params, path)
    kernel = np.asarray(fake_quant_weights(p['kernel']), np.float32)
    y = self.tf.nn.conv2d(x, kernel.reshape(1, 1, *kernel.shape), 1, 'VALID')
    return self.activate(y + p['bias'].astype(np.float32), activation, path)

  def pool(self, x, path: str):
    return self.quant(self.tf.reduce_mean(x, axis=[1, 2], keepdims=True), path)


def forward_fn(model: QATMobileNetV3, variables: Tree):
  """The deployed QAT network as a TF function: images (N, H, W, 3) -> float32 logits (N, K)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  model.check()
  m = model.float_model
  variables = jax.tree.map(np.asarray, variables)
  g = _Graph(tf, variables, m.bn_epsilon, m.padding)
  hs = m.activation_name(HS)

  def bneck(x, i: int, spec):
    path, shortcut = f'block_{i}', x
    if spec.expand:
      x = g.conv_bn(x, f'{path}/expand', activation=spec.activation)
    x = g.conv_bn(x, f'{path}/depthwise', spec.kernel, spec.stride, True, spec.activation)
    if spec.se_squeeze:
      s = g.pool(x, f'{path}/se/pool')
      s = g.dense(s, f'{path}/se/reduce', 'relu')
      s = g.dense(s, f'{path}/se/expand')
      if m.se_gate == 'sigmoid':
        lo, hi = qat_layers.SIGMOID_RANGE
        s = tf.quantization.fake_quant_with_min_max_args(tf.sigmoid(s), min=lo, max=hi)
      else:
        s = g.quant(tf.nn.relu6(s + 3.0), f'{path}/se/gate_relu6')
        s = g.quant(s * (1.0 / 6.0), f'{path}/se/gate')
      x = g.quant(x * s, f'{path}/se/scale')
    x = g.conv_bn(x, f'{path}/project')
    if spec.stride == 1 and shortcut.shape[-1] == spec.out:
      x = g.quant(x + shortcut, f'{path}/add')
    return x

  def forward(images):
    x = g.quant(images, 'input')
    x = g.conv_bn(x, 'stem', 3, 2, activation=hs)
    for i, spec in enumerate(m.block_specs()):
      x = bneck(x, i, spec)
    x = g.conv_bn(x, 'head_conv', activation=hs)
    if m.last_stage == 'v2':
      x = g.conv_bn(x, 'head_depthwise', 3, 1, True, hs)
      x = g.conv_bn(x, 'head_project')
      x = g.pool(g.conv_bn(x, 'pre_logits', activation=hs), 'pool')
    else:
      x = g.dense(g.pool(x, 'pool'), 'pre_logits', hs)
    return tf.reshape(g.dense(x, 'logits'), [-1, m.num_classes])
  return forward


def to_tflite(model: QATMobileNetV3, variables: Tree, image_size: int, batch_size: int = 1
              ) -> bytes:
  """The int8 TFLite flatbuffer (float32 input and output) of the QAT network with its trained
  ranges; variables: {'params', 'batch_stats', 'quant_stats'}."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  serve = tf.function(forward_fn(model, variables), autograph=False, input_signature=[
      tf.TensorSpec((batch_size, image_size, image_size, 3), tf.float32, name='images')])
  converter = tf.lite.TFLiteConverter.from_concrete_functions(
      [serve.get_concrete_function()], serve)
  # Every tensor has a range, so the model is int8 throughout without a representative dataset
  # (which TFLITE_BUILTINS_INT8 would demand): tests/export check that no float op remains.
  converter.optimizations = [tf.lite.Optimize.DEFAULT]
  return converter.convert()
