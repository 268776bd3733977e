"""The training loop around the pure steps: data, logging, evaluation, checkpoints, preemption.

`train_and_evaluate(config, workdir)` is what `main.py` calls. It resumes from the newest good
checkpoint in `workdir` (the data position follows from the restored step: the input pipeline
is deterministic), evaluates raw and EMA weights, and stops cleanly on SIGTERM or orbax's
preemption notice after writing a checkpoint of the current step.

What is trained is `config.task`'s (`mnv3_jax.tasks.registry`): its model, data, loss, metrics
and console names; everything else here is the same for every task.
"""
import functools
import json
import time
from typing import Optional

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, parameter_overview, periodic_actions
from etils import epath

from mnv3_jax.interop import pretrained
from mnv3_jax.parallel import sharding
from mnv3_jax.tasks import registry
from mnv3_jax.train import (checkpointing, evaluation, init_from, optim, preflight, reporter,
                            run_header, steps, stop_signals, workdir_lock)


def build_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int):
  """(schedule, tx): the recipe's learning-rate schedule and RMSProp+L2 chain."""
  o = config.optim
  schedule = optim.learning_rate_schedule(
      base_learning_rate=o.base_learning_rate, base_batch_size=o.base_batch_size,
      batch_size=config.batch_size, steps_per_epoch=steps_per_epoch,
      warmup_epochs=o.warmup_epochs, warmup_init_fraction=o.warmup_init_fraction,
      decay_rate=o.decay_rate, decay_epochs=o.decay_epochs, staircase=o.staircase)
  tx = optim.create_optimizer(learning_rate=schedule, rmsprop_decay=o.rmsprop_decay,
                              momentum=o.momentum, epsilon=o.epsilon,
                              weight_decay=o.weight_decay, initial_scale=o.initial_scale)
  return schedule, tx


def abstract_train_state(init_fn, mesh) -> steps.TrainState:
  """The train state's shapes, dtypes and (replicated) shardings, without computing it."""
  abstract = jax.eval_shape(init_fn, jax.random.key(0))
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding.replicated(mesh)),
      abstract)


def evaluate(eval_fn, variables, data_config, config, mesh) -> dict:
  """One set of weights over config's task's eval split of `data_config`: {'loss', 'top1',
  'top5', 'count'} for classification (`evaluation.evaluate_weights`)."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.data = data_config
  return evaluation.evaluate_weights(eval_fn, {'': variables}, registry.get(config), config,
                                     mesh)['']


def check_finite(step: int, metrics) -> None:
  """Raises FloatingPointError naming the step and the first non-finite metric."""
  for name, value in jax.device_get(metrics.compute()).items():
    if not np.isfinite(value):
      raise FloatingPointError(
          f'Non-finite {name} = {value} at step {step}; training stopped. The last checkpoint '
          'written before this step is intact.')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       ctrl_c_stops: bool = False) -> Optional[dict]:
  """Trains `config` in `workdir` to `num_epochs`, resuming if checkpoints exist.

  SIGTERM (and with `ctrl_c_stops`, as `main.py` sets, Ctrl-C) ends the run after the current
  step with a checkpoint of it (`stop_signals`).

  Returns the last evaluation's metrics ({'eval_top1', 'ema_top1', ...}; segmentation:
  {'eval_miou', 'ema_miou', 'ema_pixel_accuracy', ...}), or None if stopped early
  or there was nothing left to train.
  """
  mesh = sharding.make_mesh()
  checked = preflight.check_config(config, workdir, mesh)
  with _lock_workdir(workdir):
    stop = stop_signals.StopFlag(ctrl_c_stops)   # before the first compile: it may take minutes
    try:
      return _train_and_evaluate(config, workdir, mesh, checked, stop)
    finally:
      stop.restore()


def _lock_workdir(workdir: str) -> workdir_lock.Lock:
  """Process 0 locks `workdir`; if it is busy, every process raises WorkdirBusyError together."""
  busy = None
  try:
    lock = workdir_lock.acquire(workdir, process_index=jax.process_index())
  except workdir_lock.WorkdirBusyError as e:
    lock, busy = workdir_lock.Lock(), e
  if jax.process_count() > 1 and multihost_utils.broadcast_one_to_all(np.int32(busy is not None)):
    busy = busy or workdir_lock.WorkdirBusyError(
        f'workdir {workdir} is in use by another training run (process 0 holds no lock on it).',
        {}, '')
  if busy is not None:
    raise busy
  return lock


def build_model(config: ml_collections.ConfigDict, info=None):
  """The network `config` trains (its task's: MobileNetV3(**config.model), its QAT form with
  config.quant, an LR-ASPP model for segmentation). info: the dataset info (segmentation takes
  its class count from it)."""
  return registry.get(config).build_model(info)


def qat_freeze(config: ml_collections.ConfigDict, steps_per_epoch: int) -> steps.QATFreeze:
  """config.qat's freeze epochs as steps."""
  return steps.QATFreeze(bn_step=round(config.qat.freeze_bn_epochs * steps_per_epoch),
                         ranges_step=round(config.qat.freeze_ranges_epochs * steps_per_epoch))


def _train_and_evaluate(config, workdir, mesh, checked, stop) -> Optional[dict]:
  info, task = checked.info, checked.task
  model = task.build_model(info)
  steps_per_epoch = max(1, info.num_train_examples // config.batch_size)
  total_steps = (config.num_train_steps if config.num_train_steps > 0
                 else max(1, int(config.num_epochs * steps_per_epoch)))
  schedule, tx = build_optimizer(config, steps_per_epoch)
  init_fn, train_fn, eval_fn = steps.jit_steps(model, tx, schedule, config, mesh,
                                               qat_freeze(config, steps_per_epoch), task)
  float_eval_fn = None
  if config.quant == 'qat':    # the float EMA weights are evaluated too
    float_eval_fn = steps.jit_eval(model.float_model, mesh, task)

  ckpt = checkpointing.Checkpointer(
      workdir, save_every_steps=config.checkpoint_every_steps, keep=config.keep_checkpoints,
      keep_best=config.keep_best, best_metric=f'ema_{task.report.eval_metric}')
  writer = None
  try:
    try:
      state, start_step = ckpt.restore(abstract_train_state(init_fn, mesh))
    except checkpointing.IncompatibleCheckpointError as e:
      raise _with_workdir_config(e, workdir, config) from e
    # Only now: a config whose checkpoints do not fit must leave the run's files as they were.
    checkpointing.save_config(workdir, config)
    writer = _metric_writer(workdir)
    report = reporter.Reporter(total_steps, start_step or 0, names=task.report)
    report.header(run_header.lines(task.header_lines(model, info), config, info, mesh,
                                   steps_per_epoch, total_steps, workdir, start_step,
                                   task.eval_split()))
    if state is None:
      state, start_step = init_fn(jax.random.key(config.seed)), 0
      state = init_from.apply(state, checked.init_variables, task, sharding.replicated(mesh))
      writer.write_hparams(_flat_hparams(config))
      _write_parameter_table(workdir, state.params)
    if start_step >= total_steps:
      logging.info('The checkpoint at step %d has finished training (%d steps): nothing to do.',
                   start_step, total_steps)
      return None
    result, state = _train_loop(
        state, start_step, total_steps, train_fn, task,
        functools.partial(evaluation.evaluate_state, eval_fn, float_eval_fn, task), config,
        workdir, mesh, writer, ckpt, stop, report)
    ckpt.wait_until_finished()      # a failed background save surfaces here, not silently
    if result is not None:
      report.final(total_steps, result, ckpt.best())
      task.on_train_end(workdir, model, jax.tree.map(
          lambda x: np.asarray(x.addressable_data(0)), state.variables(ema=True)))
    return result
  finally:
    ckpt.close()
    if writer is not None:
      writer.close()


def _train_loop(state, start_step, total_steps, train_fn, task, evaluate_state, config, workdir,
                mesh, writer, ckpt, stop, report) -> tuple:
  """Steps from `start_step` to `total_steps`; returns (the last eval metrics (None if stopped),
  the last state).

  evaluate_state(state, config, mesh) -> the eval metrics of the state
  (`evaluation.evaluate_state`).
  """
  train_batches = task.train_iterator(
      global_batch_size=config.batch_size, seed=config.seed,
      start_step=start_step, process_index=jax.process_index(),
      process_count=jax.process_count())
  hooks = []
  if jax.process_index() == 0 and config.profile_first_step >= 0:
    hooks.append(periodic_actions.Profile(logdir=workdir,
                                          first_profile=config.profile_first_step))
  eval_metrics, accumulated, previous = None, None, None
  batches = sharding.prefetch_to_mesh(train_batches, mesh)
  for step in range(start_step + 1, total_steps + 1):
    compiled = report.compiling('train step') if step == start_step + 1 else None
    with jax.profiler.StepTraceAnnotation('train', step_num=step):
      state, metrics = train_fn(state, next(batches))
    if compiled is not None:
      compiled()
      report.start_timing(step)
    stop.trained()
    ckpt.check_for_errors()         # a failed background save ends the run now, not at the next
    if previous is not None:
      check_finite(*previous)       # one step behind: keeps the dispatch queue full
    previous = (step, metrics)
    accumulated = metrics if accumulated is None else accumulated.merge(metrics)
    for hook in hooks:
      hook(step)
    last = step == total_steps
    log_due = step % config.log_every_steps == 0 or last
    if log_due or report.due():
      check_finite(step, metrics)
      values = {k: float(v) for k, v in jax.device_get(accumulated.compute()).items()}
      report.progress(step, values)
      if log_due:
        rate = report.steps_per_second(step)
        writer.write_scalars(step, {f'train_{k}': v for k, v in values.items()}
                             | ({'steps_per_sec': rate} if rate else {}))
        accumulated = None
    stopping = stop.raised or ckpt.reached_preemption(step)
    evaluated = step % config.eval_every_steps == 0 or last
    saved = []
    if evaluated:
      check_finite(step, metrics)
      first_eval = eval_metrics is None
      if first_eval:
        report.compiling('evaluation step')
      started = time.monotonic()
      eval_metrics = evaluate_state(state, config, mesh)
      seconds = time.monotonic() - started
      writer.write_scalars(step, eval_metrics)
      best = ckpt.best()
      is_best = best is None or eval_metrics[f'ema_{task.report.eval_metric}'] > best[0]
    started = time.monotonic()
    if evaluated and ckpt.save_best(step, state, eval_metrics):
      saved.append(f'best/{step}')
    if step % config.checkpoint_every_steps == 0 or last or stopping:
      check_finite(step, metrics)
      if ckpt.save(step, state, force=last or stopping):
        saved.insert(0, f'checkpoints/{step}')
    if evaluated:
      report.evaluation(step, eval_metrics, is_best, saved, seconds, with_compile=first_eval,
                        save_seconds=time.monotonic() - started)
    if stopping:
      report.stopped(step, 'stop requested' if stop.raised else 'preemption notice',
                     f'{workdir}/checkpoints/{step}')
      return None, state
  return eval_metrics, state


def _with_workdir_config(error, workdir: str, config) -> Exception:
  """`error` plus the model options in which workdir/config.json differs from `config`."""
  try:
    saved = json.loads((epath.Path(workdir) / 'config.json').read_text())['model']
  except (OSError, ValueError, KeyError, TypeError):
    return error
  diffs = [f'model.{k}: workdir {w!r}, this config {c!r}'
           for k, w, c in pretrained.differing_options(saved, config.model.to_dict())]
  if not diffs:
    return error
  return checkpointing.IncompatibleCheckpointError(
      f'{error} The workdir\'s config.json says it was trained with other options: '
      + '; '.join(diffs) + '.')


def _metric_writer(workdir: str) -> metric_writers.MetricWriter:
  """TensorBoard events on process 0 (in a background thread); the console gets `reporter` lines."""
  if jax.process_index() > 0:
    return metric_writers.MultiWriter([])
  return metric_writers.AsyncMultiWriter([metric_writers.SummaryWriter(workdir)])


def _write_parameter_table(workdir: str, params) -> None:
  """The per-array parameter table goes to workdir/parameters.txt; the log gets one line."""
  path = epath.Path(workdir) / 'parameters.txt'
  if jax.process_index() == 0:
    path.write_text(parameter_overview.get_parameter_overview(params) + '\n')


def _flat_hparams(config: ml_collections.ConfigDict) -> dict:
  """Config as {'a.b': scalar} for TensorBoard's hparams plugin."""
  flat = {}

  def walk(node, prefix):
    for key, value in node.items():
      if isinstance(value, ml_collections.ConfigDict):
        walk(value, f'{prefix}{key}.')
      else:
        flat[prefix + key] = value if isinstance(value, (int, float, str, bool)) else str(value)

  walk(config, '')
  return flat
