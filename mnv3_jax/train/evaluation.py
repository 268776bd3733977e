"""Evaluation passes: every set of weights over the task's eval split, each batch read once.

The task (`mnv3_jax.tasks.base.Task`) gives the batches, what each batch contributes
(`eval_fn` = the jitted `steps.eval_step`) and how a pass's contributions become scalars (its
`eval_accumulator`); the results carry the task's metrics and 'count', the examples scored.
"""
import jax

from mnv3_jax.parallel import sharding
from mnv3_jax.tasks import base


def evaluate_weights(eval_fn, weights: dict, task: base.Task, config, mesh) -> dict:
  """One pass over the eval split, each batch decoded once and run through every set of weights.

  weights: {name: variables} (`TrainState.variables()`), or {name: (eval_fn, variables)} to run
  that set through its own eval step. Returns {name: {metric: value, ..., 'count'}} over real
  examples only (classification: loss, top1, top5; segmentation: loss, miou, pixel_accuracy,
  mean_accuracy).
  """
  batches = task.eval_iterator(global_batch_size=config.batch_size,
                               process_index=jax.process_index(),
                               process_count=jax.process_count())
  totals = {name: task.eval_accumulator() for name in weights}
  for batch in sharding.prefetch_to_mesh(batches, mesh):
    for name, variables in weights.items():
      fn, variables = variables if isinstance(variables, tuple) else (eval_fn, variables)
      totals[name].add(fn(variables, batch), batch)
  return {name: total.result() for name, total in totals.items()}


def evaluate_state(eval_fn, float_eval_fn, task: base.Task, state, config, mesh) -> dict:
  """Evaluates the raw and the EMA weights: {'eval_<metric>', ..., 'ema_<metric>', ...}; in QAT
  both through the quantized model, and the EMA weights through the float one ('float_ema_*')."""
  weights = {'eval': state.variables(), 'ema': state.variables(ema=True)}
  if float_eval_fn is not None:
    weights['float_ema'] = (float_eval_fn, {'params': state.ema_params,
                                            'batch_stats': state.ema_batch_stats})
  results = evaluate_weights(eval_fn, weights, task, config, mesh)
  return {f'{name}_{k}': v for name, metrics in results.items() for k, v in metrics.items()}
