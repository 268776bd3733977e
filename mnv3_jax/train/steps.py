"""The functional core of training: the train state and the pure train and eval steps.

The task (`mnv3_jax.tasks.base.Task`; classification unless one is given) supplies the loss, the
train metrics and what an eval batch contributes; the state, optimizer, EMA, sharding and
BatchNorm handling below are the same for every task.

`train_step(state, batch) -> (state, metrics)` and `eval_step(variables, batch) -> metrics` are
pure; `jit_steps` compiles them with the batch sharded over the mesh's 'data' axis
and the state replicated (donated in the train step). Side effects live in `train.trainer`.

BatchNorm statistics in training (`config.bn_stats`):
- 'global': `jax.jit` of the step on the global batch; XLA all-reduces every BN layer's moments
  (forward and backward), so the statistics are those of the whole batch, as on one device.
- 'per_device': the step runs under `jax.shard_map` over 'data' and each device normalizes its
  own shard with that shard's statistics, as TF's TPU trainer (and pmap without axis_name) did.
  Gradients and metrics are averaged over devices, and so are the new BN running averages (which
  keeps them replicated: the running mean is the global batch mean; the running variance is the
  mean of the per-device variances).

Quantization-aware training (`config.quant == 'qat'`, the model a `QATMobileNetV3`): the state
also carries the moving activation ranges ('quant_stats'); the BatchNorm statistics stop moving at
step `QATFreeze.bn_step` and the ranges at `QATFreeze.ranges_step` (torchvision's recipe).
"""
import functools
from typing import Any, Callable, NamedTuple, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from mnv3_jax.compress.qat_layers import Phase
from mnv3_jax.compress.qat_model import QATMobileNetV3
from mnv3_jax.model import fused
from mnv3_jax.parallel import sharding
from mnv3_jax.tasks import base
from mnv3_jax.tasks import classification
from mnv3_jax.train import optim


BN_STATS = ('global', 'per_device')


def check_bn_stats(bn_stats: str) -> None:
  """Raises ValueError unless `bn_stats` is one of BN_STATS."""
  if bn_stats not in BN_STATS:
    raise ValueError(f'Invalid bn_stats {bn_stats!r}; allowed: {BN_STATS} (statistics of the '
                     "whole batch, or of each device's shard).")


@flax.struct.dataclass
class TrainState:
  step: jax.Array                  # int32 scalar: optimizer steps taken
  params: Any
  batch_stats: Any
  opt_state: Any
  ema_params: Any                  # TF-style moving averages, evaluated as "ema_*"
  ema_batch_stats: Any
  quant_stats: Any = flax.struct.field(default_factory=dict)   # QAT's ranges; {} without QAT

  def variables(self, ema: bool = False) -> dict:
    """The model's variables: {'params', 'batch_stats'} (EMA or raw), and 'quant_stats' in QAT."""
    out = ({'params': self.ema_params, 'batch_stats': self.ema_batch_stats} if ema else
           {'params': self.params, 'batch_stats': self.batch_stats})
    return {**out, 'quant_stats': self.quant_stats} if self.quant_stats else out


class QATFreeze(NamedTuple):
  """The steps from which QAT's BatchNorm statistics and activation ranges stay fixed."""
  bn_step: int
  ranges_step: int


def create_train_state(model, tx: optax.GradientTransformation, rng: jax.Array,
                       image_size: Tuple[int, int]) -> TrainState:
  """Initial state for (H, W, 3) images; EMA starts equal to the weights (as TF's does)."""
  variables = model.init(rng, jnp.zeros((1, *image_size, 3), jnp.float32))
  params, batch_stats = variables['params'], variables['batch_stats']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                    opt_state=tx.init(params), ema_params=params, ema_batch_stats=batch_stats,
                    quant_stats=variables.get('quant_stats', {}))


def train_step(state: TrainState, batch: dict, *, model, tx: optax.GradientTransformation,
               schedule: Callable[[jax.Array], jax.Array], label_smoothing: float,
               ema_decay: float, seed: int, qat_freeze: Optional[QATFreeze] = None,
               axis_name: Optional[str] = None, task: Optional[base.Task] = None
               ) -> Tuple[TrainState, Any]:
  """One RMSProp step on a batch {'image': (B, H, W, 3), 'label': (B,) or (B, H, W)}.

  task: the loss and train metrics (`task.train_metrics`, returned); None: classification with
  `label_smoothing`.

  axis_name None: `batch` is the global batch. Otherwise the step is the body of a shard_map over
  `axis_name`: `batch` is this device's shard, BatchNorm uses its statistics, and gradients, new
  BN running averages and metrics are averaged over the axis (shards must be of equal size).
  """
  task = task or classification.Classification(label_smoothing=label_smoothing)
  dropout_rng = jax.random.fold_in(jax.random.key(seed), state.step)
  if axis_name is not None:
    dropout_rng = jax.random.fold_in(dropout_rng, jax.lax.axis_index(axis_name))

  def loss_fn(params):
    outputs, updates = _train_forward(model, {**state.variables(), 'params': params},
                                      batch['image'], state.step, dropout_rng, qat_freeze)
    loss, values = task.loss_and_metrics(outputs, batch, axis_name)
    return loss, (values, updates)

  (loss, (values, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  batch_stats, quant_stats = updates['batch_stats'], updates.get('quant_stats', {})
  if axis_name is not None:
    grads, batch_stats, loss, values = jax.lax.pmean(
        (grads, batch_stats, loss, values), axis_name)
    # Each device saw its own shard's min/max; the replicated ranges are their means.
    quant_stats = jax.tree.map(
        lambda v: jax.lax.pmean(v, axis_name) if v.dtype == jnp.float32 else v, quant_stats)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  step = state.step + 1
  new_state = state.replace(
      step=step, params=params, batch_stats=batch_stats, opt_state=opt_state,
      quant_stats=quant_stats,
      ema_params=optim.ema_update(state.ema_params, params, step, ema_decay),
      ema_batch_stats=optim.ema_update(state.ema_batch_stats, batch_stats, step, ema_decay))
  metrics = task.train_metrics.single_from_model_output(
      **{**values, 'loss': loss}, learning_rate=schedule(state.step),
      grad_norm=optax.tree.norm(grads), update_norm=optax.tree.norm(updates),
      param_norm=optax.tree.norm(params))
  return new_state, metrics


def _train_forward(model, variables: dict, images: jax.Array, step: jax.Array, rng: jax.Array,
                   qat_freeze: Optional[QATFreeze]):
  """(outputs, updated {'batch_stats'[, 'quant_stats']}) of a training forward pass."""
  rngs = {'dropout': rng}
  if isinstance(model, QATMobileNetV3):
    phase = Phase(train=True, bn_frozen=step >= qat_freeze.bn_step,
                  ranges_frozen=step >= qat_freeze.ranges_step)
    return model.apply(variables, images, phase, mutable=['batch_stats', 'quant_stats'],
                       rngs=rngs)
  return model.apply(variables, images, train=True, mutable=['batch_stats'], rngs=rngs)


def eval_step(variables: dict, batch: dict, *, model, task: Optional[base.Task] = None):
  """What one padded batch {'image', 'label', 'mask'} contributes to the evaluation
  (`task.eval_outputs`; classification's EvalMetrics without a task); padding (mask 0) does not
  count.

  variables: `TrainState.variables()`. The forward is `fused.inference_fn` (the fused CPU kernels
  where they run) for a float MobileNetV3 (any other module: its plain apply), the deployed int8
  arithmetic for a QATMobileNetV3.
  """
  task = task or classification.Classification(label_smoothing=0.0)
  if isinstance(model, QATMobileNetV3):
    outputs = model.apply(variables, batch['image'])
  else:
    outputs = fused.inference_fn(model)(variables, batch['image'])
  return task.eval_outputs(outputs, batch)


def jit_steps(model, tx, schedule, config, mesh, qat_freeze: Optional[QATFreeze] = None,
              task: Optional[base.Task] = None):
  """Returns (init_fn, train_fn, eval_fn) compiled for `mesh`; state replicated, batch sharded.

  task: the task of `config` (`mnv3_jax.tasks.registry.get`); None: classification.

  The train step's BatchNorm statistics follow `config.bn_stats` (see the module docstring). The
  steps are traced with `mesh` active, so the native CPU kernels run per device on the sharded
  batch (`sharding.per_shard`) rather than on an all-gathered copy of it. qat_freeze: required
  when `model` is a QATMobileNetV3.
  """
  if isinstance(model, QATMobileNetV3) and qat_freeze is None:
    raise ValueError('A QATMobileNetV3 needs qat_freeze (the steps that freeze BN and ranges).')
  check_bn_stats(config.bn_stats)
  task = task or classification.Classification(config)
  rep, data = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  # The init runs once: on XLA CPU, unoptimized code compiles it ~3x faster (Small: 47 s -> 17 s).
  init_options = {'xla_backend_optimization_level': 0} if jax.default_backend() == 'cpu' else None
  init_fn = jax.jit(
      functools.partial(create_train_state, model, tx,
                        image_size=task.init_image_size()), out_shardings=rep,
      compiler_options=init_options)
  step = functools.partial(train_step, model=model, tx=tx, schedule=schedule,
                           label_smoothing=config.label_smoothing, ema_decay=config.ema_decay,
                           seed=config.seed, qat_freeze=qat_freeze, task=task)
  if config.bn_stats == 'per_device':
    axis = sharding.DATA_AXIS
    # check_vma=False: gradients stay per device inside the body and are averaged explicitly.
    step = jax.shard_map(functools.partial(step, axis_name=axis), mesh=mesh,
                         in_specs=(P(), P(axis)), out_specs=(P(), P()), check_vma=False)
  train_fn = jax.jit(sharding.traced_in_mesh(step, mesh), in_shardings=(rep, data),
                     out_shardings=(rep, rep), donate_argnums=0)
  return init_fn, train_fn, jit_eval(model, mesh, task)


def jit_eval(model, mesh, task: Optional[base.Task] = None):
  """`eval_step` of `model` compiled for `mesh`: (variables replicated, batch sharded) -> what the
  batch contributes (`task.eval_outputs`, replicated). task None: classification."""
  task = task or classification.Classification(label_smoothing=0.0)
  return jax.jit(sharding.traced_in_mesh(functools.partial(eval_step, model=model, task=task),
                                         mesh),
                 in_shardings=(sharding.replicated(mesh), sharding.batch_sharded(mesh)),
                 out_shardings=sharding.replicated(mesh))
