"""Tests of mnv3_jax.train.optim against independent NumPy / closed-form / TensorFlow references."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mnv3_jax import model as model_lib
from mnv3_jax.train import optim

# Tiny epochs so that 9 steps cross the warmup and two staircase boundaries:
# peak = 0.1 * 1024 / 4096 = 0.025, W = 1.5 * 2 = 3 steps, D = 1 * 2 = 2 steps.
SCHEDULE = dict(base_learning_rate=0.1, base_batch_size=4096, batch_size=1024, steps_per_epoch=2,
                warmup_epochs=1.5, warmup_init_fraction=0.1, decay_rate=0.5, decay_epochs=1.0)
PEAK, WARMUP_STEPS, DECAY_STEPS = 0.025, 3, 2
# A weight decay large enough that decaying the wrong leaves moves them far past the tolerance.
OPT = dict(rmsprop_decay=0.9, momentum=0.9, epsilon=0.002, weight_decay=0.05)
NUM_STEPS = 9


def closed_form_lr(step):
  """Model Garden's LinearWarmup(ExponentialDecay(staircase)) for SCHEDULE, in float64."""
  def decayed(s):
    return PEAK * 0.5 ** math.floor(s / DECAY_STEPS)
  init = 0.1 * PEAK
  if step < WARMUP_STEPS:
    return init + step / WARMUP_STEPS * (decayed(WARMUP_STEPS) - init)
  return decayed(step)


def small_tree(rng):
  """Leaves named as in the model: depthwise kernel, BN scale/bias, 1x1 kernel, logits."""
  return {
      'block_0': {
          'depthwise': {'conv': {'kernel': rng.normal(size=(3, 3, 1, 4))},
                        'bn': {'scale': 1 + 0.1 * rng.normal(size=(4,)),
                               'bias': rng.normal(size=(4,))}},
          'project': {'conv': {'kernel': rng.normal(size=(4, 6))}},
      },
      'logits': {'kernel': rng.normal(size=(6, 3)), 'bias': rng.normal(size=(3,))},
  }


DECAYED = {('block_0', 'project', 'conv', 'kernel'), ('logits', 'kernel')}


def grads_sequence(tree, rng):
  return [jax.tree.map(lambda p: rng.normal(size=p.shape), tree) for _ in range(NUM_STEPS)]


def numpy_tf1_rmsprop(params, grads_seq, *, initial_scale, decay_all=False):
  """TF1 RMSPropOptimizer's documented update, with slim L2 added to the gradient, in float64."""
  flat = {tuple(k.key for k in path): np.asarray(v, np.float64)
          for path, v in jax.tree_util.tree_leaves_with_path(params)}
  ms = {k: np.full_like(v, initial_scale) for k, v in flat.items()}
  mom = {k: np.zeros_like(v) for k, v in flat.items()}
  history = []
  for step, grads in enumerate(grads_seq):
    lr = closed_form_lr(step)
    gflat = {tuple(k.key for k in path): np.asarray(v, np.float64)
             for path, v in jax.tree_util.tree_leaves_with_path(grads)}
    for k, w in flat.items():
      g = gflat[k] + (OPT['weight_decay'] * w if decay_all or k in DECAYED else 0.0)
      ms[k] = OPT['rmsprop_decay'] * ms[k] + (1 - OPT['rmsprop_decay']) * g * g
      mom[k] = OPT['momentum'] * mom[k] + lr * g / np.sqrt(ms[k] + OPT['epsilon'])
      flat[k] = w - mom[k]
    history.append(dict(flat))
  return history


def run_optax(params, grads_seq, initial_scale):
  tx = optim.create_optimizer(learning_rate=optim.learning_rate_schedule(**SCHEDULE),
                              initial_scale=initial_scale, **OPT)
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  state = tx.init(params)

  @jax.jit
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  history = []
  for grads in grads_seq:
    params, state = step(params, state, jax.tree.map(lambda g: jnp.asarray(g, jnp.float32), grads))
    history.append({tuple(k.key for k in path): np.asarray(v)
                    for path, v in jax.tree_util.tree_leaves_with_path(params)})
  return history


@pytest.mark.parametrize('initial_scale', [1.0, 0.0])
def test_optax_chain_equals_numpy_tf1_rmsprop(initial_scale):
  rng = np.random.default_rng(0)
  params = small_tree(rng)
  grads_seq = grads_sequence(params, rng)
  ours = run_optax(params, grads_seq, initial_scale)
  ref = numpy_tf1_rmsprop(params, grads_seq, initial_scale=initial_scale)
  wrong = numpy_tf1_rmsprop(params, grads_seq, initial_scale=initial_scale, decay_all=True)
  for step in range(NUM_STEPS):
    for k in ref[step]:
      np.testing.assert_allclose(ours[step][k], ref[step][k], rtol=1e-6, atol=1e-6,
                                 err_msg=f'step {step} leaf {k}')
  # The comparison can see a wrong mask: decaying the depthwise kernel and BN scale moves them.
  for k in [('block_0', 'depthwise', 'conv', 'kernel'), ('block_0', 'depthwise', 'bn', 'scale')]:
    assert np.max(np.abs(wrong[-1][k] - ref[-1][k])) > 1e-4


def test_optax_chain_equals_tensorflow_rmsprop():
  tf = pytest.importorskip('tensorflow')
  rng = np.random.default_rng(1)
  params = small_tree(rng)
  grads_seq = grads_sequence(params, rng)
  ours = run_optax(params, grads_seq, initial_scale=1.0)
  keys = [tuple(k.key for k in path) for path, _ in jax.tree_util.tree_leaves_with_path(params)]
  leaves = jax.tree.leaves(params)
  tf_vars = [tf.Variable(np.asarray(v, np.float32)) for v in leaves]
  step_var = tf.Variable(0, dtype=tf.int64)
  lr_values = [closed_form_lr(s) for s in range(NUM_STEPS)]
  opt = tf.compat.v1.train.RMSPropOptimizer(
      learning_rate=lambda: tf.constant(lr_values, tf.float32)[step_var.read_value()],
      decay=OPT['rmsprop_decay'], momentum=OPT['momentum'], epsilon=OPT['epsilon'])
  for s, grads in enumerate(grads_seq):
    gs = []
    for k, v, g in zip(keys, tf_vars, jax.tree.leaves(grads)):
      g = tf.constant(np.asarray(g, np.float32))
      gs.append(g + OPT['weight_decay'] * v if k in DECAYED else g)
    opt.apply_gradients(list(zip(gs, tf_vars)))
    step_var.assign_add(1)
    for k, v in zip(keys, tf_vars):
      np.testing.assert_allclose(ours[s][k], v.numpy(), rtol=1e-6, atol=1e-6,
                                 err_msg=f'step {s} leaf {k}')


def test_schedule_matches_closed_form():
  schedule = optim.learning_rate_schedule(**SCHEDULE)
  jitted = jax.jit(schedule)
  for step in [0, 1, 2, 3, 4, 5, 6, 7, 8, 11]:
    np.testing.assert_allclose(float(jitted(jnp.int32(step))), closed_form_lr(step), rtol=1e-6)
  assert float(schedule(0)) == pytest.approx(0.1 * PEAK, rel=1e-6)
  # The warmup ends at the decayed value at W (decay counts from step 0, as in Model Garden).
  assert float(schedule(WARMUP_STEPS)) == pytest.approx(PEAK * 0.5, rel=1e-6)


def test_schedule_official_numbers_and_variants():
  # imagenet_mobilenetv3small_tpu.yaml: 0.01 @ 4096, 312 steps/epoch, warmup 1560 steps from 0.001.
  official = optim.learning_rate_schedule(
      base_learning_rate=0.01, base_batch_size=4096, batch_size=4096, steps_per_epoch=312,
      warmup_epochs=5, warmup_init_fraction=0.1, decay_rate=0.99, decay_epochs=3)
  assert float(official(0)) == pytest.approx(0.001, rel=1e-6)
  assert float(official(780)) == pytest.approx(0.001 + 0.5 * (0.0099 - 0.001), rel=1e-6)
  assert float(official(1560)) == pytest.approx(0.0099, rel=1e-6)
  assert float(official(1871)) == pytest.approx(0.0099, rel=1e-6)
  assert float(official(1872)) == pytest.approx(0.01 * 0.99 ** 2, rel=1e-6)
  assert float(official(312000)) == pytest.approx(0.01 * 0.99 ** 333, rel=1e-5)
  smooth = optim.learning_rate_schedule(**{**SCHEDULE, 'staircase': False, 'warmup_epochs': 0})
  assert float(smooth(0)) == pytest.approx(PEAK, rel=1e-6)
  assert float(smooth(3)) == pytest.approx(PEAK * 0.5 ** 1.5, rel=1e-6)
  from_numpy = optim.learning_rate_schedule(**{**SCHEDULE, 'steps_per_epoch': np.int64(2),
                                               'batch_size': np.int32(1024)})
  assert float(from_numpy(4)) == pytest.approx(closed_form_lr(4), rel=1e-6)


@pytest.mark.parametrize('name, value', [
    ('base_learning_rate', 0.0), ('batch_size', 0), ('batch_size', 64.0), ('steps_per_epoch', 0),
    ('warmup_epochs', -1), ('warmup_init_fraction', 1.5), ('decay_rate', 0.0),
    ('decay_epochs', 0)])
def test_schedule_rejects_bad_values(name, value):
  with pytest.raises(ValueError, match=name):
    optim.learning_rate_schedule(**{**SCHEDULE, name: value})


@pytest.mark.parametrize('name, value', [
    ('rmsprop_decay', 1.0), ('momentum', -0.1), ('epsilon', 0.0), ('weight_decay', -1e-5),
    ('learning_rate', -0.1)])
def test_optimizer_rejects_bad_values(name, value):
  args = dict(learning_rate=0.1, **OPT)
  with pytest.raises(ValueError, match=name):
    optim.create_optimizer(**{**args, name: value})


def test_ema_decay_formula():
  for t in [0, 1, 2, 10, 100, 889]:   # (1+t)/(10+t) < 0.99 for t < 890
    assert float(optim.ema_decay(t, 0.99)) == pytest.approx((1 + t) / (10 + t), rel=1e-6)
  for t in [891, 5000, 10**6]:
    assert float(optim.ema_decay(t, 0.99)) == pytest.approx(0.99, rel=1e-7)
  assert float(optim.ema_decay(1, 0.9999)) == pytest.approx(2 / 11, rel=1e-6)
  assert float(jax.jit(optim.ema_decay, static_argnums=1)(jnp.int32(10**7), 0.9999)) == (
      pytest.approx(0.9999, rel=1e-7))
  with pytest.raises(ValueError, match='decay'):
    optim.ema_decay(1, 1.5)
  with pytest.raises(ValueError, match='step'):
    optim.ema_decay(-1, 0.99)


def test_ema_update_matches_numpy_under_jit():
  rng = np.random.default_rng(2)
  tree = {'params': small_tree(rng), 'batch_stats': {'bn': {'mean': rng.normal(size=(4,)),
                                                            'var': rng.uniform(size=(4,))}}}
  ema = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)
  ref = jax.tree.map(np.asarray, tree)
  update = jax.jit(optim.ema_update, static_argnums=3)
  for t in [1, 2, 3, 50, 5000]:
    new = jax.tree.map(lambda x: rng.normal(size=x.shape), tree)
    d = min(0.999, (1 + t) / (10 + t))
    ref = jax.tree.map(lambda e, n: d * e + (1 - d) * n, ref, new)
    ema = update(ema, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), new), jnp.int32(t), 0.999)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), ema, ref)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(ema))


def _abstract_params(channels=3, **options):
  model = model_lib.MobileNetV3(variant='small', num_classes=10, **options)
  return jax.eval_shape(lambda: model_lib.init_variables(
      model, jax.random.key(0), (32, 32), channels=channels))['params']


def test_weight_decay_mask_on_mobilenet_v3_small():
  params = _abstract_params()
  mask = optim.weight_decay_mask(params)
  leaves = jax.tree_util.tree_leaves_with_path(params)
  mask_leaves = jax.tree.leaves(mask)
  assert len(leaves) == len(mask_leaves)
  for (path, leaf), decayed in zip(leaves, mask_leaves):
    name = '/'.join(k.key for k in path)
    # Independent oracle by shape (valid for RGB input): matrices and non-depthwise conv kernels.
    expected = leaf.ndim >= 2 and not (leaf.ndim == 4 and leaf.shape[2] == 1)
    assert decayed == expected, name
  assert mask['stem']['conv']['kernel'] and mask['logits']['kernel']
  assert mask['block_0']['se']['reduce']['kernel'] and mask['block_0']['se']['expand']['kernel']
  assert mask['block_1']['expand']['conv']['kernel']
  assert mask['block_1']['project']['conv']['kernel']
  assert mask['head_conv']['conv']['kernel'] and mask['pre_logits']['kernel']
  assert not mask['block_1']['depthwise']['conv']['kernel']
  assert not mask['block_0']['se']['reduce']['bias'] and not mask['logits']['bias']
  assert not mask['stem']['bn']['scale'] and not mask['stem']['bn']['bias']


def test_weight_decay_mask_grayscale_stem_and_v2_last_stage():
  mask = optim.weight_decay_mask(_abstract_params(channels=1, last_stage='v2'))
  assert mask['stem']['conv']['kernel']   # (3, 3, 1, 16): depthwise-shaped but a dense conv
  assert not mask['head_depthwise']['conv']['kernel']
  assert mask['head_project']['conv']['kernel'] and mask['pre_logits']['conv']['kernel']
