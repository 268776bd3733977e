"""The functional core of training: the train state and the pure train and eval steps.

`train_step(state, batch) -> (state, metrics)` and `eval_step(params, batch_stats, batch) ->
metrics` are pure; `jit_steps` compiles them with the batch sharded over the mesh's 'data' axis
and the state replicated (donated in the train step). Side effects live in `mnv3_jax.train`.
"""
import functools
from typing import Any, Callable, Tuple

import flax
import jax
import jax.numpy as jnp
import optax
from clu import metrics as clu_metrics

from mnv3_jax import optim, sharding


@flax.struct.dataclass
class TrainState:
  step: jax.Array                  # int32 scalar: optimizer steps taken
  params: Any
  batch_stats: Any
  opt_state: Any
  ema_params: Any                  # TF-style moving averages, evaluated as "ema_*"
  ema_batch_stats: Any


@flax.struct.dataclass
class TrainMetrics(clu_metrics.Collection):
  loss: clu_metrics.Average.from_output('loss')
  top1: clu_metrics.Average.from_output('top1')
  top5: clu_metrics.Average.from_output('top5')
  learning_rate: clu_metrics.LastValue.from_output('learning_rate')
  grad_norm: clu_metrics.Average.from_output('grad_norm')
  update_norm: clu_metrics.Average.from_output('update_norm')
  param_norm: clu_metrics.LastValue.from_output('param_norm')


@flax.struct.dataclass
class EvalMetrics(clu_metrics.Collection):
  loss: clu_metrics.Average.from_output('loss')
  top1: clu_metrics.Average.from_output('top1')
  top5: clu_metrics.Average.from_output('top5')


def create_train_state(model, tx: optax.GradientTransformation, rng: jax.Array,
                       image_size: Tuple[int, int]) -> TrainState:
  """Initial state for (H, W, 3) images; EMA starts equal to the weights (as TF's does)."""
  variables = model.init(rng, jnp.zeros((1, *image_size, 3), jnp.float32), train=False)
  params, batch_stats = variables['params'], variables['batch_stats']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                    opt_state=tx.init(params), ema_params=params, ema_batch_stats=batch_stats)


def _topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """(N,) float32: 1 where the label is among the k highest logits."""
  topk = jax.lax.top_k(logits, k)[1]
  return jnp.any(topk == labels[:, None], axis=-1).astype(jnp.float32)


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float) -> jax.Array:
  """(N,) smoothed softmax cross-entropy; labels int (N,)."""
  num_classes = logits.shape[-1]
  targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def train_step(state: TrainState, batch: dict, *, model, tx: optax.GradientTransformation,
               schedule: Callable[[jax.Array], jax.Array], label_smoothing: float,
               ema_decay: float, seed: int) -> Tuple[TrainState, TrainMetrics]:
  """One RMSProp step on a global batch {'image': (B, H, W, 3), 'label': (B,)}."""
  dropout_rng = jax.random.fold_in(jax.random.key(seed), state.step)

  def loss_fn(params):
    logits, updates = model.apply(
        {'params': params, 'batch_stats': state.batch_stats}, batch['image'], train=True,
        mutable=['batch_stats'], rngs={'dropout': dropout_rng})
    loss = cross_entropy(logits, batch['label'], label_smoothing).mean()
    return loss, (logits, updates['batch_stats'])

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  step = state.step + 1
  new_state = state.replace(
      step=step, params=params, batch_stats=batch_stats, opt_state=opt_state,
      ema_params=optim.ema_update(state.ema_params, params, step, ema_decay),
      ema_batch_stats=optim.ema_update(state.ema_batch_stats, batch_stats, step, ema_decay))
  metrics = TrainMetrics.single_from_model_output(
      loss=loss, top1=_topk_correct(logits, batch['label'], 1).mean(),
      top5=_topk_correct(logits, batch['label'], min(5, logits.shape[-1])).mean(),
      learning_rate=schedule(state.step), grad_norm=optax.tree.norm(grads),
      update_norm=optax.tree.norm(updates), param_norm=optax.tree.norm(params))
  return new_state, metrics


def eval_step(params, batch_stats, batch: dict, *, model) -> EvalMetrics:
  """Metrics of one padded batch {'image', 'label', 'mask'}; padding (mask 0) is not counted."""
  logits = model.apply({'params': params, 'batch_stats': batch_stats}, batch['image'],
                       train=False)
  mask = batch['mask'].astype(jnp.float32)
  return EvalMetrics.single_from_model_output(
      loss=cross_entropy(logits, batch['label'], 0.0), mask=mask,
      top1=_topk_correct(logits, batch['label'], 1),
      top5=_topk_correct(logits, batch['label'], min(5, logits.shape[-1])))


def jit_steps(model, tx, schedule, config, mesh):
  """Returns (init_fn, train_fn, eval_fn) compiled for `mesh`; state replicated, batch sharded."""
  rep, data = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  init_fn = jax.jit(
      functools.partial(create_train_state, model, tx,
                        image_size=(config.data.image_size,) * 2), out_shardings=rep)
  train_fn = jax.jit(
      functools.partial(train_step, model=model, tx=tx, schedule=schedule,
                        label_smoothing=config.label_smoothing, ema_decay=config.ema_decay,
                        seed=config.seed),
      in_shardings=(rep, data), out_shardings=(rep, rep), donate_argnums=0)
  eval_fn = jax.jit(functools.partial(eval_step, model=model), in_shardings=(rep, rep, data),
                    out_shardings=rep)
  return init_fn, train_fn, eval_fn
