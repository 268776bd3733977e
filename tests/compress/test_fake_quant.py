"""Fake quantization equals TensorFlow's fake-quant kernels (what the TFLite converter maps to int8),
with straight-through gradients, and the moving ranges behave as TF's QAT observers do."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from mnv3_jax.compress import fake_quant as fq

RANGES = [(-0.5, 0.8), (-3.0, 0.0), (0.0, 6.0), (0.3, 2.0), (-2.0, -0.4), (-1e-3, 2e-3),
          (-7.31, 7.31)]


@pytest.mark.parametrize('lo, hi', RANGES)
@pytest.mark.parametrize('narrow_range', [False, True])
def test_per_tensor_equals_tensorflow(lo, hi, narrow_range):
  rng = np.random.default_rng(0)
  span = hi - lo
  x = rng.uniform(lo - span, hi + span, (4096,)).astype(np.float32)
  x[:7] = [lo, hi, 0.0, lo - 1, hi + 1, (lo + hi) / 2, lo + span / 255 * 0.5]
  want = tf.quantization.fake_quant_with_min_max_vars(x, lo, hi, num_bits=8,
                                                       narrow_range=narrow_range).numpy()
  got = np.asarray(fq.fake_quant(jnp.asarray(x), lo, hi, narrow_range=narrow_range))
  nudged_lo, nudged_hi, scale = (float(v) for v in fq.nudged_range(lo, hi, 8, narrow_range))
  assert_same_levels(x, got, want, nudged_lo, nudged_hi, scale)
  assert len(np.unique(got)) <= (255 if narrow_range else 256)


def assert_same_levels(x, got, want, nudged_lo, nudged_hi, scale):
  """Equal up to float32 rounding (1e-6 of the range's magnitude), except inputs within 1e-4 of a
  step of halfway between two levels, where TF's kernel (a fused multiply-add) and XLA may round
  the tie either way: there both must be one of the two neighbouring levels."""
  rounding = 1e-6 * max(abs(nudged_lo), abs(nudged_hi))
  close = np.abs(got - want) <= rounding
  steps = (np.clip(x, nudged_lo, nudged_hi).astype(np.float64) - nudged_lo) / scale
  tie = np.abs(steps - np.floor(steps) - 0.5) < 1e-4
  assert np.all(close | tie), (x[~(close | tie)], got[~(close | tie)], want[~(close | tie)])
  one_step = np.abs(np.abs(got - want) - scale) <= rounding
  assert np.all(close | one_step)


@pytest.mark.parametrize('lo, hi', [(-0.5, 0.8), (0.0, 6.0), (-7.31, 7.31)])
def test_per_tensor_equals_tflite_int8_quantize_dequantize(lo, hi):
  """The converted TFLite model of one fake-quant op is QUANTIZE -> DEQUANTIZE in int8: its
  output is the int8 round trip of the input, with the range's nudged scale and zero point."""
  rng = np.random.default_rng(1)
  span = hi - lo
  x = rng.uniform(lo - span / 2, hi + span / 2, (1, 64, 64, 1)).astype(np.float32)

  @tf.function(input_signature=[tf.TensorSpec(x.shape, tf.float32)])
  def identity(images):
    return tf.quantization.fake_quant_with_min_max_args(images, min=lo, max=hi)
  converter = tf.lite.TFLiteConverter.from_concrete_functions(
      [identity.get_concrete_function()], identity)
  converter.optimizations = [tf.lite.Optimize.DEFAULT]
  interp = tf.lite.Interpreter(model_content=converter.convert())
  interp.allocate_tensors()
  assert {op['op_name'] for op in interp._get_ops_details()} >= {'QUANTIZE', 'DEQUANTIZE'}  # pylint: disable=protected-access
  interp.set_tensor(interp.get_input_details()[0]['index'], x)
  interp.invoke()
  want = interp.get_tensor(interp.get_output_details()[0]['index'])
  got = np.asarray(fq.fake_quant(jnp.asarray(x), lo, hi))
  nudged_lo, nudged_hi, scale = (float(v) for v in fq.nudged_range(lo, hi))
  assert_same_levels(x, got, want, nudged_lo, nudged_hi, scale)


def test_zero_is_exact_and_the_grid_has_256_levels():
  x = jnp.linspace(-1.0, 3.0, 10001)
  out = np.asarray(fq.fake_quant(x, -0.7, 2.9))
  assert 0.0 in out and out[np.argmin(np.abs(np.asarray(x)))] == 0.0
  assert len(np.unique(out)) == 256


def test_per_channel_weights_equal_tensorflow():
  rng = np.random.default_rng(1)
  kernel = rng.standard_normal((3, 3, 8, 16)).astype(np.float32) * rng.uniform(0.01, 3, 16)
  bound = np.abs(kernel).max(axis=(0, 1, 2))
  want = tf.quantization.fake_quant_with_min_max_vars_per_channel(
      kernel, -bound, bound, num_bits=8, narrow_range=True).numpy()
  got = np.asarray(fq.fake_quant_weights(jnp.asarray(kernel)))
  # float32 rounding of level * scale + nudged lo: 1e-6 of the channel's range
  assert np.all(np.abs(got - want) <= 1e-6 * bound), np.abs(got - want).max()
  steps = got / (bound / 127)          # symmetric, zero point 0: integers in [-127, 127]
  np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)
  assert np.abs(np.round(steps)).max() == 127


def test_all_zero_channel_stays_zero_and_finite():
  kernel = jnp.zeros((1, 1, 4, 2)).at[..., 1].set(0.5)
  out = fq.fake_quant_weights(kernel)
  assert np.all(np.isfinite(out)) and np.all(np.asarray(out[..., 0]) == 0)


def test_straight_through_gradient_is_identity_inside_and_zero_outside():
  x = jnp.array([-2.0, -0.5, -0.1, 0.0, 0.3, 0.79, 0.9, 5.0])
  lo, hi = -0.5, 0.8
  nudged_lo, nudged_hi, _ = fq.nudged_range(lo, hi)
  grad = jax.grad(lambda v: jnp.sum(fq.fake_quant(v, lo, hi) * jnp.arange(1.0, 9.0)))(x)
  inside = (x >= nudged_lo) & (x <= nudged_hi)
  np.testing.assert_array_equal(np.asarray(grad), np.where(inside, np.arange(1.0, 9.0), 0.0))
  want = tf.GradientTape()
  xt = tf.constant(np.asarray(x))
  with want as tape:
    tape.watch(xt)
    y = tf.reduce_sum(tf.quantization.fake_quant_with_min_max_vars(xt, lo, hi)
                      * tf.range(1.0, 9.0))
  np.testing.assert_array_equal(np.asarray(grad), tape.gradient(y, xt).numpy())


class _Probe(nn.Module):
  @nn.compact
  def __call__(self, x, update):
    return fq.MovingRangeQuant(decay=0.9)(x, update)


def test_moving_range_starts_at_the_first_batch_then_averages_and_contains_zero():
  probe = _Probe()
  variables = probe.init(jax.random.key(0), jnp.zeros((2, 3)), update=False)
  stats = variables[fq.QUANT_STATS]
  assert not bool(stats['MovingRangeQuant_0']['seen'])
  first = jnp.array([[0.5, 1.0, 2.0]])      # all positive: the range still reaches down to 0
  _, updated = probe.apply({fq.QUANT_STATS: stats}, first, update=True, mutable=[fq.QUANT_STATS])
  s = updated[fq.QUANT_STATS]['MovingRangeQuant_0']
  assert (float(s['min']), float(s['max'])) == (0.0, 2.0) and bool(s['seen'])
  second = jnp.array([[-4.0, 0.0, 12.0]])
  out, updated = probe.apply(updated, second, update=True, mutable=[fq.QUANT_STATS])
  s = updated[fq.QUANT_STATS]['MovingRangeQuant_0']
  np.testing.assert_allclose([float(s['min']), float(s['max'])], [0.9 * 0 + 0.1 * -4,
                                                                  0.9 * 2 + 0.1 * 12], rtol=1e-6)
  # quantized with the updated range: -4 clamps to its (nudged) lower end, 12 to its upper end
  lo, hi, _ = fq.nudged_range(s['min'], s['max'])
  np.testing.assert_allclose(np.asarray(out)[0, [0, 2]], [float(lo), float(hi)], rtol=1e-6)
  frozen = probe.apply(updated, jnp.array([[-100.0, 0.0, 100.0]]), update=False)
  np.testing.assert_allclose(np.asarray(frozen)[0, [0, 2]], [float(lo), float(hi)], rtol=1e-6)
