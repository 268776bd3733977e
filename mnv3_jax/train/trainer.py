"""The training loop around the pure steps: data, logging, evaluation, checkpoints, preemption.

`train_and_evaluate(config, workdir)` is what `main.py` calls. It resumes from the newest good
checkpoint in `workdir` (the data position follows from the restored step: the input pipeline
is deterministic), evaluates raw and EMA weights, and stops cleanly on SIGTERM or orbax's
preemption notice after writing a checkpoint of the current step.
"""
import json
import os
import signal
import threading
from typing import Optional

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, parameter_overview, periodic_actions
from etils import epath

from mnv3_jax.train import checkpointing
from mnv3_jax.data import input_pipeline
from mnv3_jax.train import optim
from mnv3_jax.interop import pretrained
from mnv3_jax.parallel import sharding
from mnv3_jax.train import steps
from mnv3_jax.train import preflight
from mnv3_jax.model import MobileNetV3


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


def evaluate_weights(eval_fn, weights: dict, data_config, config, mesh) -> dict:
  """One pass over the eval split, each batch decoded once and run through every set of weights.

  weights: {name: (params, batch_stats)}. Returns {name: {'loss', 'top1', 'top5', 'count'}} over
  real examples only.
  """
  batches = input_pipeline.eval_iterator(
      data_config, global_batch_size=config.batch_size, process_index=jax.process_index(),
      process_count=jax.process_count())
  totals = {}
  for batch in sharding.prefetch_to_mesh(batches, mesh):
    for name, (params, batch_stats) in weights.items():
      metrics = eval_fn(params, batch_stats, batch)
      totals[name] = metrics if name not in totals else totals[name].merge(metrics)
  out = {}
  for name, total in totals.items():
    out[name] = {k: float(v) for k, v in total.compute().items()}
    out[name]['count'] = int(total.top1.count)
  return out


def evaluate(eval_fn, params, batch_stats, data_config, config, mesh) -> dict:
  """`evaluate_weights` of one set of weights: {'loss', 'top1', 'top5', 'count'}."""
  return evaluate_weights(eval_fn, {'': (params, batch_stats)}, data_config, config, mesh)['']


def check_finite(step: int, metrics: steps.TrainMetrics) -> None:
  """Raises FloatingPointError naming the step and the first non-finite metric."""
  for name, value in jax.device_get(metrics.compute()).items():
    if not np.isfinite(value):
      raise FloatingPointError(
          f'Non-finite {name} = {value} at step {step}; training stopped. The last checkpoint '
          'written before this step is intact.')


class _SigtermFlag:
  """Turns SIGTERM into a flag the loop polls at step boundaries (one process only).

  Python runs signal handlers only in the main thread, between bytecodes: while that thread is
  inside a long C++ call (the first XLA compile of a big model can take minutes on CPU) the handler
  waits. So the C-level handler also writes the signal number to a pipe (`signal.set_wakeup_fd`;
  it runs in whichever thread the kernel picks), and a watcher thread reads it at once: if no step
  has been trained in this process yet, nothing is lost by exiting, and it exits (status 0) within
  a second; otherwise it leaves the flag for the loop, which checkpoints at the next step boundary.

  With several processes, jax's preemption service catches SIGTERM instead and all processes stop
  at the same step through `reached_preemption`; a Python handler would replace jax's, and a flag
  raised on one process only would leave the others waiting for it in the next collective.
  """

  def __init__(self):
    self.raised = False
    self._trained = False
    self._lock = threading.Lock()
    if threading.current_thread() is not threading.main_thread() or jax.process_count() > 1:
      return
    self._previous = signal.signal(signal.SIGTERM, self._handle)
    read_fd, self._write_fd = os.pipe()
    os.set_blocking(self._write_fd, False)
    self._previous_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
    if self._previous_fd != -1:   # someone else's (an asyncio loop): leave it, keep the flag only
      signal.set_wakeup_fd(self._previous_fd)
      os.close(read_fd)
      os.close(self._write_fd)
      del self._write_fd
      return
    threading.Thread(target=self._watch, args=(read_fd,), name='mnv3_sigterm', daemon=True).start()

  def _handle(self, signum, frame):
    del signum, frame
    if not self.raised:
      logging.warning('SIGTERM received: checkpointing at the end of this step.')
    self.raised = True

  def _watch(self, read_fd: int) -> None:
    with os.fdopen(read_fd, 'rb', buffering=0) as pipe:
      while byte := pipe.read(1):       # b'' once `restore` closes the write end
        if byte[0] != signal.SIGTERM:
          continue
        with self._lock:
          if not self._trained:
            logging.warning('SIGTERM received before the first step: nothing to checkpoint; '
                            'exiting now. Rerun the same command to resume.')
            logging.flush()
            os._exit(0)   # pylint: disable=protected-access
          self._handle(signal.SIGTERM, None)

  def trained(self) -> None:
    """Marks that a step has run: from now on SIGTERM waits for the loop's checkpoint."""
    if not self._trained:
      with self._lock:
        self._trained = True

  def restore(self):
    if hasattr(self, '_write_fd'):
      signal.set_wakeup_fd(self._previous_fd)
      os.close(self._write_fd)
    if hasattr(self, '_previous'):
      signal.signal(signal.SIGTERM, self._previous)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Optional[dict]:
  """Trains `config` in `workdir` to `num_epochs`, resuming if checkpoints exist.

  Returns the last evaluation's metrics ({'top1', 'ema_top1', ...}), or None if stopped early.
  """
  mesh = sharding.make_mesh()
  info = preflight.check_config(config, workdir, mesh)
  sigterm = _SigtermFlag()     # before the first compile, which may take minutes
  try:
    return _train_and_evaluate(config, workdir, mesh, info, sigterm)
  finally:
    sigterm.restore()


def _train_and_evaluate(config, workdir, mesh, info, sigterm) -> Optional[dict]:
  model = MobileNetV3(**config.model)
  steps_per_epoch = max(1, info.num_train_examples // config.batch_size)
  total_steps = (config.num_train_steps if config.num_train_steps > 0
                 else max(1, int(config.num_epochs * steps_per_epoch)))
  schedule, tx = build_optimizer(config, steps_per_epoch)
  init_fn, train_fn, eval_fn = steps.jit_steps(model, tx, schedule, config, mesh)

  ckpt = checkpointing.Checkpointer(
      workdir, save_every_steps=config.checkpoint_every_steps, keep=config.keep_checkpoints,
      keep_best=config.keep_best, best_metric='ema_top1')
  try:
    state, start_step = ckpt.restore(abstract_train_state(init_fn, mesh))
  except checkpointing.IncompatibleCheckpointError as e:
    ckpt.close()
    raise _with_workdir_config(e, workdir, config) from e
  # Only now: a config whose checkpoints do not fit must leave the run's files as they were.
  checkpointing.save_config(workdir, config)
  writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0)
  if state is None:
    state, start_step = init_fn(jax.random.key(config.seed)), 0
    if config.get('init_from'):
      state = pretrained.replace_weights(state, pretrained.init_variables(config.init_from, model),
                                         sharding.replicated(mesh))
      logging.info('Initialised params and BN statistics from %s.', config.init_from)
    writer.write_hparams(_flat_hparams(config))
    _write_parameter_table(workdir, state.params)
  logging.info('Training %d steps (%d per epoch) from step %d; global batch %d on %d devices.',
               total_steps, steps_per_epoch, start_step, config.batch_size, mesh.devices.size)

  if start_step >= total_steps:
    logging.info('The checkpoint at step %d has finished training (%d steps): nothing to do.',
                 start_step, total_steps)
    ckpt.close()
    return None
  try:
    return _train_loop(state, start_step, total_steps, train_fn, eval_fn, config, workdir,
                       mesh, writer, ckpt, sigterm)
  finally:
    ckpt.wait_until_finished()
    ckpt.close()
    writer.flush()


def _train_loop(state, start_step, total_steps, train_fn, eval_fn, config, workdir, mesh,
                writer, ckpt, sigterm) -> Optional[dict]:
  """Steps from `start_step` to `total_steps`; returns the last eval metrics (None if stopped)."""
  train_batches = input_pipeline.train_iterator(
      config.data, global_batch_size=config.batch_size, seed=config.seed,
      start_step=start_step, process_index=jax.process_index(),
      process_count=jax.process_count())
  hooks = [periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer)]
  if jax.process_index() == 0 and config.profile_first_step >= 0:
    hooks.append(periodic_actions.Profile(logdir=workdir,
                                          first_profile=config.profile_first_step))
  eval_metrics, accumulated, previous = None, None, None
  batches = sharding.prefetch_to_mesh(train_batches, mesh)
  for step in range(start_step + 1, total_steps + 1):
    with jax.profiler.StepTraceAnnotation('train', step_num=step):
      state, metrics = train_fn(state, next(batches))
    sigterm.trained()
    if previous is not None:
      check_finite(*previous)       # one step behind: keeps the dispatch queue full
    previous = (step, metrics)
    accumulated = metrics if accumulated is None else accumulated.merge(metrics)
    for hook in hooks:
      hook(step)
    last = step == total_steps
    if step % config.log_every_steps == 0 or last:
      check_finite(step, metrics)
      writer.write_scalars(step, {f'train_{k}': v for k, v in accumulated.compute().items()})
      accumulated = None
    if step % config.eval_every_steps == 0 or last:
      check_finite(step, metrics)
      eval_metrics = _evaluate_both(eval_fn, state, config, mesh)
      writer.write_scalars(step, eval_metrics)
      ckpt.save_best(step, state, eval_metrics)
    stop = sigterm.raised or ckpt.reached_preemption(step)
    if step % config.checkpoint_every_steps == 0 or last or stop:
      check_finite(step, metrics)
      ckpt.save(step, state, force=last or stop)
    if stop:
      logging.warning('Stopping at step %d after a preemption notice; rerun to resume.', step)
      return None
  return eval_metrics


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


def _evaluate_both(eval_fn, state, config, mesh) -> dict:
  """Evaluates the raw and the EMA weights: {'top1', ..., 'ema_top1', ...}."""
  both = evaluate_weights(eval_fn, {'raw': (state.params, state.batch_stats),
                                    'ema': (state.ema_params, state.ema_batch_stats)},
                         config.data, config, mesh)
  raw, ema = both['raw'], both['ema']
  logging.info('Eval at step %d: top1 %.4f, EMA top1 %.4f over %d examples.',
               int(state.step), raw['top1'], ema['top1'], raw['count'])
  return {**{f'eval_{k}': v for k, v in raw.items()},
          **{f'ema_{k}': v for k, v in ema.items()}}


def _write_parameter_table(workdir: str, params) -> None:
  """The per-array parameter table goes to workdir/parameters.txt; the log gets one line."""
  path = epath.Path(workdir) / 'parameters.txt'
  if jax.process_index() == 0:
    path.write_text(parameter_overview.get_parameter_overview(params) + '\n')
  logging.info('%s trainable parameters; per-array table in %s.',
               f'{parameter_overview.count_parameters(params):,}', path)


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
