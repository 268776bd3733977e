"""What you train is what you ship: the int8 TFLite model exported from a quantization-aware
trained network (its trained ranges, no calibration) against the JAX QAT model in evaluation.

The network is Small 1.0 at 32x32 on the embedded digits, trained here quantization-aware for a
few seconds (BatchNorm statistics frozen for the last steps, so the ranges see the folded
network that ships), then exported through `tflite.export` and compared on the 300 test digits.
"""
import os

import jax
import numpy as np
import optax
import pytest

from configs import demo
from mnv3_jax.compress.qat_layers import Phase
from mnv3_jax.compress.qat_model import QATMobileNetV3, init_variables
from mnv3_jax.export import benchmark, tflite
from mnv3_jax.model import MobileNetV3
from tests import support

SIZE, TRAIN_STEPS, FROZEN_BN_STEPS = 32, 300, 100
O0 = {'xla_backend_optimization_level': 0}


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """(QAT model, its variables with trained ranges, data config, held-out images and labels)."""
  data_config = demo.demo_config().data
  data_config.data_dir = str(tmp_path_factory.mktemp('data'))
  float_model = MobileNetV3(variant='small', width=1.0, num_classes=10, depthwise_impl='conv',
                            bn_momentum=0.9, dropout_rate=0.0)
  model = QATMobileNetV3.from_model(float_model)
  variables = init_variables(model, jax.random.key(0), (SIZE, SIZE))
  images, labels = support.split_arrays(data_config, 'train')
  tx = optax.adam(3e-3)

  def step(variables, opt_state, x, y, bn_frozen):
    def loss_fn(params):
      logits, updates = model.apply({**variables, 'params': params}, x,
                                    Phase(True, bn_frozen, False),
                                    mutable=['batch_stats', 'quant_stats'])
      targets = optax.smooth_labels(jax.nn.one_hot(y, 10), 0.1)
      return optax.softmax_cross_entropy(logits, targets).mean(), updates
    grads, updates = jax.grad(loss_fn, has_aux=True)(variables['params'])
    deltas, opt_state = tx.update(grads, opt_state, variables['params'])
    return {**updates, 'params': optax.apply_updates(variables['params'], deltas)}, opt_state

  step = jax.jit(step, compiler_options=O0)
  opt_state = tx.init(variables['params'])
  rng = np.random.default_rng(0)
  for i in range(TRAIN_STEPS):
    idx = rng.choice(len(images), 64, replace=False)
    variables, opt_state = step(variables, opt_state, images[idx], labels[idx],
                                i >= TRAIN_STEPS - FROZEN_BN_STEPS)
  return (model, jax.tree.map(np.asarray, variables), data_config,
          support.split_arrays(data_config, data_config.eval_split))


@pytest.fixture(scope='module')
def exported(trained, tmp_path_factory):
  model, variables, data_config, _ = trained
  out = str(tmp_path_factory.mktemp('export') / 'out')
  info = tflite.export(model.float_model, variables, out, image_size=SIZE, int8=True,
                       data_config=None, source='qat test')
  return out, info


def test_int8_model_is_integer_throughout_with_the_trained_ranges(trained, exported):
  _, variables, _, _ = trained
  out, info = exported
  assert info['int8_ranges'] == 'trained (quantization-aware)'
  interp = benchmark.interpreter(os.path.join(out, tflite.INT8_FILE))
  ops = interp._get_ops_details()  # pylint: disable=protected-access
  details = {d['index']: d for d in interp.get_tensor_details()}
  float_ops = [op['op_name'] for op in ops
               if op['op_name'] not in ('QUANTIZE', 'DEQUANTIZE', 'DELEGATE')   # XNNPACK's
               and any(details[i]['dtype'] != np.int8 for i in op['outputs'])]
  assert not float_ops
  assert {'HARD_SWISH', 'DEPTHWISE_CONV_2D', 'MEAN', 'MUL', 'ADD'} <= {op['op_name'] for op in ops}
  # The input's int8 scale is the trained input range's, nudged as TF nudges it.
  quantize = next(op for op in ops if op['op_name'] == 'QUANTIZE')
  scale = details[quantize['outputs'][0]]['quantization'][0]
  lo, hi = (float(variables['quant_stats']['input'][k]) for k in ('min', 'max'))
  np.testing.assert_allclose(scale, (hi - lo) / 255, rtol=1e-5)


def test_exported_int8_predicts_what_the_jax_qat_model_does(trained, exported):
  """Top-1 agreement counts a tie as agreement: both models output logits on the int8 grid of the
  logit tensor, where two classes can hold the same value (measured: 1% of the test digits), and
  argmax then picks by class index, which a one-step difference in either logit flips."""
  model, variables, _, (images, labels) = trained
  jax_logits = np.asarray(jax.jit(lambda v, x: model.apply(v, x), compiler_options=O0)(
      variables, images))
  int8_logits = benchmark.predict(os.path.join(exported[0], tflite.INT8_FILE), images)
  jax_top1, int8_top1 = jax_logits.argmax(-1), int8_logits.argmax(-1)
  rows = np.arange(len(images))
  agree = ((jax_logits[rows, int8_top1] == jax_logits.max(-1))
           | (int8_logits[rows, jax_top1] == int8_logits.max(-1)))
  out = variables['quant_stats']['logits']['out']
  steps = np.abs(int8_logits - jax_logits) / ((out['max'] - out['min']) / 255)
  print(f'QAT export: JAX top-1 {np.mean(jax_top1 == labels):.4f}, agreement {np.mean(agree):.4f} '
        f'(argmax alone {np.mean(int8_top1 == jax_top1):.4f}), logit steps mean {steps.mean():.2f}, '
        f'p99 {np.percentile(steps, 99):.2f}, max {steps.max():.2f}')
  assert np.mean(jax_top1 == labels) >= 0.7                        # a trained, varied model
  assert np.bincount(jax_top1, minlength=10).max() <= 0.3 * len(labels)
  assert np.mean(agree) >= 0.995 and np.mean(int8_top1 == jax_top1) >= 0.98
  assert np.mean(steps) <= 3 and np.percentile(steps, 99) <= 10
