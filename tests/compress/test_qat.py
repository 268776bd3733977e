"""Quantization-aware training: the QAT network's variables, freezing, and the QAT train step on
8 devices, resumed, and through the trainer."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from mnv3_jax.compress.qat_layers import Phase
from mnv3_jax.compress.qat_model import QATMobileNetV3, init_variables
from mnv3_jax.model import MobileNetV3
from mnv3_jax.parallel import sharding
from mnv3_jax.train import preflight, steps, trainer
from tests.support import random_batch, restore_state, steps_per_epoch, tiny_config


def qat_config(data_dir, **overrides):
  """tiny_config trained quantization-aware; BN freezes after step 2, the ranges after step 4."""
  c = tiny_config(data_dir, quant='qat', **overrides)
  per_epoch = steps_per_epoch(c)
  c.qat.freeze_bn_epochs, c.qat.freeze_ranges_epochs = 2 / per_epoch, 4 / per_epoch
  return c


def flat(tree):
  return traverse_util.flatten_dict(jax.device_get(tree), sep='/')


def test_qat_variables_are_the_float_models_plus_one_range_per_requantization_point():
  model = MobileNetV3(variant='small', width=0.35, num_classes=10)
  float_vars = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  qat = QATMobileNetV3.from_model(model)
  variables = init_variables(qat, jax.random.key(1), (32, 32), float_vars)
  for collection in ('params', 'batch_stats'):
    assert jax.tree.map(np.shape, float_vars[collection]) == jax.tree.map(
        np.shape, variables[collection])
  ranges = {k.rsplit('/', 1)[0] for k in flat(variables['quant_stats'])}
  # Block 1 of Small: expand (ReLU) -> depthwise (ReLU) -> project -> no residual (stride 2).
  assert {'block_1/expand/out', 'block_1/depthwise/out', 'block_1/project/out'} <= ranges
  # Block 4: h-swish layers have a range before and after; SE pool/gate/scale; the residual add.
  assert {'block_4/expand/pre', 'block_4/expand/out', 'block_4/se/pool', 'block_4/se/gate_relu6',
          'block_4/se/gate', 'block_4/se/scale', 'block_4/add'} <= ranges
  assert {'input', 'pool', 'pre_logits/pre', 'logits/out'} <= ranges
  assert 'block_1/add' not in ranges


def test_ranges_and_bn_statistics_move_until_frozen():
  model = QATMobileNetV3.from_model(MobileNetV3(variant='small', width=0.35, num_classes=10))
  variables = init_variables(model, jax.random.key(0), (32, 32))
  batches = [random_batch(8, 32, 10, seed)['image'] for seed in range(3)]

  @jax.jit
  def step(variables, x, bn_frozen, ranges_frozen):
    _, updates = model.apply(variables, x, Phase(True, bn_frozen, ranges_frozen),
                             mutable=['batch_stats', 'quant_stats'],
                             rngs={'dropout': jax.random.key(0)})
    return {**variables, **updates}

  first = step(variables, batches[0], False, False)
  assert all(bool(v) for k, v in flat(first['quant_stats']).items() if k.endswith('seen'))
  moved = step(first, batches[1], False, False)
  assert flat(moved['quant_stats']) != flat(first['quant_stats'])
  assert max(np.abs(a - flat(first['batch_stats'])[k]).max()
             for k, a in flat(moved['batch_stats']).items()) > 1e-4
  frozen = step(moved, batches[2], True, True)
  for collection in ('batch_stats', 'quant_stats'):
    for k, a in flat(frozen[collection]).items():
      np.testing.assert_array_equal(a, flat(moved[collection])[k], err_msg=k)


def test_qat_step_on_8_devices_equals_1_device(digits_dir):
  """With BatchNorm frozen (folded running statistics, as after the recipe's first epochs), 8
  devices and 1 device agree to float rounding, the ranges moving and then frozen.

  While BatchNorm still normalizes with batch moments they do not, and cannot: a value within
  float error of a rounding boundary of its int8 grid rounds the other way when 8 shards sum in
  another order, which shifts the next BatchNorm's batch moments and so every value after it
  (measured: logits of the first step 0.016 apart on a range of 0.38, Small 0.35 at 32x32)."""
  config = qat_config(digits_dir)
  model = trainer.build_model(config)
  schedule, tx = trainer.build_optimizer(config, steps_per_epoch(config))
  freeze = steps.QATFreeze(bn_step=0, ranges_step=2)
  batches = [random_batch(16, 32, 10, seed) for seed in range(3)]
  results = []
  for devices in (jax.devices()[:8], jax.devices()[:1]):
    mesh = sharding.make_mesh(devices)
    init_fn, train_fn, _ = steps.jit_steps(model, tx, schedule, config, mesh, freeze)
    state = init_fn(jax.random.key(0))
    init = jax.device_get(state)         # before the steps donate it
    for batch in batches:
      state, metrics = train_fn(state, sharding.to_global(batch, mesh))
    results.append((jax.device_get(state), float(metrics.compute()['loss'])))
  (s8, loss8), (s1, loss1) = results
  for name, bound in (('params', 1e-6), ('quant_stats', 1e-4)):
    a, b, start = flat(getattr(s8, name)), flat(getattr(s1, name)), flat(getattr(init, name))
    assert a.keys() == b.keys()
    diff, moved = (max(float(np.max(np.abs(np.asarray(x[k], np.float32)
                                           - np.asarray(y[k], np.float32)))) for k in a)
                   for x, y in ((a, b), (b, start)))
    assert moved > 1e-4 and diff <= bound * max(moved, 1.0), (name, diff, moved)
  jax.tree.map(np.testing.assert_array_equal, s8.batch_stats, init.batch_stats)   # frozen
  np.testing.assert_allclose(loss8, loss1, rtol=1e-5)


def test_qat_run_resumes_bit_identically_and_evaluates_quantized_and_float(digits_dir, tmp_path):
  straight = qat_config(digits_dir, num_train_steps=6)
  metrics = trainer.train_and_evaluate(straight, str(tmp_path / 'straight'))
  assert {'eval_top1', 'ema_top1', 'float_ema_top1'} <= metrics.keys()
  trainer.train_and_evaluate(qat_config(digits_dir, num_train_steps=3), str(tmp_path / 'resumed'))
  trainer.train_and_evaluate(straight, str(tmp_path / 'resumed'))
  a, _ = restore_state(straight, tmp_path / 'straight')
  b, step = restore_state(straight, tmp_path / 'resumed')
  assert step == 6
  for name in ('params', 'batch_stats', 'quant_stats', 'ema_params'):
    jax.tree.map(np.testing.assert_array_equal, getattr(a, name), getattr(b, name))


def test_qat_of_a_layer_tflite_int8_cannot_run_is_refused_before_the_workdir(digits_dir, tmp_path):
  config = qat_config(digits_dir)
  config.model.activation = 'gelu'
  with pytest.raises(ValueError, match=r"Activation 'gelu' cannot be quantization-aware trained; "
                                       r"allowed: \['relu', 'relu6', 'hard_swish', 'swish'\]"):
    preflight.check_config(config, str(tmp_path / 'new'), sharding.make_mesh())
  assert not (tmp_path / 'new').exists()
