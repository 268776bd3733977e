"""Optimizer, learning-rate schedule and weight EMA of the official MobileNetV3 recipe (pure).

- `learning_rate_schedule`: linear-scaling rule, linear warmup, then staircase exponential decay,
  with the semantics of TF Model Garden's `exponential` schedule wrapped in its `linear` warmup.
- `create_optimizer`: TF1 `RMSPropOptimizer` (the paper's "standard TensorFlow RMSPropOptimizer")
  with L2 regularisation added to the gradient on the kernels TF-slim regularises.
- `ema_decay` / `ema_update`: `tf.train.ExponentialMovingAverage(decay, num_updates)` semantics,
  stepped the way Model Garden's `ExponentialMovingAverage` optimizer steps it.

Everything here is jit-friendly: steps may be traced int32 scalars.
"""
import numbers
from typing import Any, Union

import jax
import jax.numpy as jnp
import optax


def _check(name: str, value: Any, allowed: str, ok, integer: bool = False) -> None:
  kind = numbers.Integral if integer else numbers.Real   # NumPy scalars included
  if isinstance(value, bool) or not isinstance(value, kind) or not ok(value):
    raise ValueError(f'Invalid {name} {value!r}; allowed: {allowed}.')


def learning_rate_schedule(*, base_learning_rate: float, base_batch_size: int, batch_size: int,
                           steps_per_epoch: int, warmup_epochs: float,
                           warmup_init_fraction: float, decay_rate: float, decay_epochs: float,
                           staircase: bool = True) -> optax.Schedule:
  """Linear warmup into an exponential decay that counts from step 0 (TF Model Garden semantics).

  With peak = base_learning_rate * batch_size / base_batch_size (linear scaling rule),
  W = warmup_epochs * steps_per_epoch and D = decay_epochs * steps_per_epoch (in steps):
    decayed(s) = peak * decay_rate ** (floor(s / D) if staircase else s / D)
    lr(s) = init + s / W * (decayed(W) - init)   for s < W, with init = warmup_init_fraction * peak
    lr(s) = decayed(s)                           for s >= W.
  This is Model Garden's `LinearWarmup(ExponentialDecayWithOffset(offset=0))`
  (official/modeling/optimization/lr_schedule.py): the decay is not delayed by the warmup, and
  the warmup ends at decayed(W), not at peak (e.g. 0.0099, not 0.01, in
  imagenet_mobilenetv3small_tpu.yaml, where W = 1560 and D = 936 steps).

  Returns a schedule mapping the optimizer step s (int, the number of updates already applied;
  optax passes 0 for the first update, as Keras passes `iterations`) to a float32 learning rate.
  """
  _check('base_learning_rate', base_learning_rate, 'a number > 0', lambda v: v > 0)
  _check('base_batch_size', base_batch_size, 'an integer >= 1', lambda v: v >= 1, integer=True)
  _check('batch_size', batch_size, 'an integer >= 1', lambda v: v >= 1, integer=True)
  _check('steps_per_epoch', steps_per_epoch, 'an integer >= 1', lambda v: v >= 1, integer=True)
  _check('warmup_epochs', warmup_epochs, 'a number >= 0', lambda v: v >= 0)
  _check('warmup_init_fraction', warmup_init_fraction, 'a number in [0, 1]',
         lambda v: 0 <= v <= 1)
  _check('decay_rate', decay_rate, 'a number in (0, 1]', lambda v: 0 < v <= 1)
  _check('decay_epochs', decay_epochs, 'a number > 0', lambda v: v > 0)
  peak = float(base_learning_rate * batch_size / base_batch_size)
  warmup_steps = float(warmup_epochs * steps_per_epoch)
  decay_steps = float(decay_epochs * steps_per_epoch)
  init = warmup_init_fraction * peak

  def decayed(step):
    exponent = step / decay_steps
    if staircase:
      exponent = jnp.floor(exponent)
    return peak * jnp.power(jnp.float32(decay_rate), exponent)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    if warmup_steps == 0:
      return decayed(step)
    warm = init + step / warmup_steps * (decayed(jnp.float32(warmup_steps)) - init)
    return jnp.where(step < warmup_steps, warm, decayed(step))

  return schedule


def _path_names(path) -> tuple:
  return tuple(str(getattr(k, 'key', getattr(k, 'name', k))) for k in path)


def weight_decay_mask(params) -> Any:
  """True on the kernels the official code L2-regularises, False elsewhere.

  TF-slim's mobilenet `training_scope` puts `l2_regularizer` on every `conv2d` (stem, 1x1
  expand/project, SE reduce/expand, head convs, logits) and none on `separable_conv2d`
  (depthwise); biases and BatchNorm scale/bias are never regularised. Model Garden does the same
  (`regularize_depthwise=False`, kernel regularizers only). Depthwise kernels are found by name
  (a path component containing 'depthwise', e.g. block_3/depthwise/conv/kernel,
  head_depthwise/conv/kernel), not by shape: a 1-channel stem kernel (3, 3, 1, 16) has the
  depthwise layout but is a dense conv. Works on params, updates or abstract (eval_shape) trees.
  """
  def decayed(path, _):
    names = _path_names(path)
    return names[-1] == 'kernel' and not any('depthwise' in n for n in names)

  return jax.tree_util.tree_map_with_path(decayed, params)


def create_optimizer(*, learning_rate: Union[optax.Schedule, float], rmsprop_decay: float,
                     momentum: float, epsilon: float, weight_decay: float,
                     initial_scale: float = 1.0) -> optax.GradientTransformation:
  """RMSProp with TF1 `tf.compat.v1.train.RMSPropOptimizer` semantics plus masked L2.

  Per leaf, with g the gradient of the data loss:
    g <- g + weight_decay * w        (on `weight_decay_mask` leaves: d/dw of wd/2 * ||w||^2,
                                      i.e. slim.l2_regularizer(wd) / keras l2(wd / 2))
    ms <- rmsprop_decay * ms + (1 - rmsprop_decay) * g^2      (ms starts at `initial_scale`)
    mom <- momentum * mom + lr(t) * g / sqrt(ms + epsilon)    (epsilon inside the sqrt and the
    w <- w - mom                                                learning rate inside the momentum)
  `initial_scale` 1.0 is TF1's ones-initialised accumulator; Model Garden's Keras (v2) RMSprop
  applies the same update with the accumulator starting at 0.0. The two differ only while the
  accumulator forgets its start (rmsprop_decay ** t: 0.9 ** 50 < 0.01), inside the warmup.
  The learning-rate schedule is evaluated at the optimizer's own count (0 on the first update).
  """
  if not callable(learning_rate):
    _check('learning_rate', learning_rate, 'a number > 0 or a schedule', lambda v: v > 0)
  _check('rmsprop_decay', rmsprop_decay, 'a number in [0, 1)', lambda v: 0 <= v < 1)
  _check('momentum', momentum, 'a number in [0, 1)', lambda v: 0 <= v < 1)
  _check('epsilon', epsilon, 'a number > 0', lambda v: v > 0)
  _check('weight_decay', weight_decay, 'a number >= 0', lambda v: v >= 0)
  _check('initial_scale', initial_scale, 'a number >= 0', lambda v: v >= 0)
  return optax.chain(
      optax.add_decayed_weights(weight_decay, mask=weight_decay_mask),
      optax.rmsprop(learning_rate, decay=rmsprop_decay, eps=epsilon, initial_scale=initial_scale,
                    eps_in_sqrt=True, centered=False, momentum=momentum),
  )


def ema_decay(step, decay: float) -> jax.Array:
  """TF's ExponentialMovingAverage decay with num_updates: min(decay, (1 + t) / (10 + t)).

  t = `step` is the number of optimizer updates applied so far, including the one whose result is
  being averaged: Model Garden's EMA optimizer reads `optimizer.iterations` after
  `apply_gradients` has incremented it (official/modeling/optimization/ema_optimizer.py), so the
  first average uses t = 1, decay 2/11. (TF-slim's train_image_classifier runs the EMA op beside
  the update, unordered, so its t is not well defined.) Returns a float32 scalar.
  """
  _check('decay', decay, 'a number in [0, 1]', lambda v: 0 <= v <= 1)
  if isinstance(step, numbers.Integral) and step < 0:
    raise ValueError(f'Invalid step {step!r}; allowed: an integer >= 0.')
  t = jnp.asarray(step, jnp.float32)
  return jnp.minimum(jnp.float32(decay), (1.0 + t) / (10.0 + t))


def ema_update(ema_tree, new_tree, step, decay: float):
  """One EMA step, `ema <- ema - (1 - d) * (ema - new)` with d = ema_decay(step, decay).

  `ema_tree` and `new_tree` have the same structure (params, batch_stats or both); `step` is as in
  `ema_decay` (the updated optimizer count). Start the EMA from the initial variables, as TF1's
  ExponentialMovingAverage does (Model Garden starts from zeros; with the (1+t)/(10+t) warm-up the
  start's weight after t updates is 10! (t+1)! / (t+10)!, 2e-12 at t = 100, so either is fine).
  Returns the new EMA tree, each leaf in its own dtype.
  """
  d = ema_decay(step, decay)
  return jax.tree.map(lambda e, n: e - (1.0 - d).astype(e.dtype) * (e - n), ema_tree, new_tree)
