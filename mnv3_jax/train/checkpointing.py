"""Orbax checkpoints of the train state: the latest N to resume from, the best K by a metric.

Layout under `workdir`:
  checkpoints/<step>/  the newest `keep`, saved every `save_every_steps` steps and at preemption
  best/<step>/         the `keep_best` best by `best_metric` (their metrics in best/<step>/metrics)
  broken/<step>/       checkpoints that failed to restore, moved here once an older one restored
  config.json          the run's config (`save_config`)

Atomicity (orbax-checkpoint 0.12.8: `_src/path/atomicity.py`, `_src/checkpointers/async_checkpointer.py`):
every process writes its shards into `<step>.orbax-checkpoint-tmp`; after a barrier that each process
reaches once its writes are committed, process 0 writes the step metadata and `commit_success.txt`
and renames the directory to `<step>` (`AtomicRenameTemporaryPath.finalize`: one POSIX rename, the
single atomic step). Listing steps (`step.find_all` -> `is_path_finalized`) skips names carrying the
tmp suffix, so a crash mid-save leaves only a tmp directory that restore never sees (a later save of
that step replaces it). On gs://, which has no atomic rename, orbax uses `CommitFileTemporaryPath`:
a step counts only once its `commit_success.txt` exists. Old checkpoints are deleted only after the
new one is committed (`CheckpointManager._finalize`), and never after a failed save.

Integrity: each step stores a fingerprint per array in its own item, which every read checks
(`mnv3_jax.storage.train_state`: the step's layout and its one verified read).

Multi-process: call every method identically on all processes (orbax synchronises them); the metrics
given to `save_best` must be equal on all processes (as a global jitted evaluation gives).
"""
import itertools
import math
from typing import Any, Mapping, Optional, Tuple

from absl import logging
from etils import epath
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from mnv3_jax.storage import train_state
from mnv3_jax.storage.train_state import IncompatibleCheckpointError  # pylint: disable=unused-import

BEST_MODES = ('max', 'min')


def _check_int(name: str, value: Any, minimum: int) -> None:
  if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
    raise ValueError(f'{name} must be an integer >= {minimum}; got {value!r}.')


def _barrier_prefix(name: str) -> ocp.options.MultiprocessingOptions:
  # Orbax names its multi-process barriers after the step: without a prefix per manager, best/<n>
  # and checkpoints/<n> saved together would wait on the same barrier and fail.
  return ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=f'mnv3_jax_{name}')


class CheckpointWriteError(OSError):
  """A checkpoint could not be written (the message names the directory and the cause)."""


class Checkpointer:
  """Orbax checkpoints of a train-state pytree under workdir: latest-N and best-K by a metric.

  Saves are asynchronous and atomic; restore skips broken checkpoints (see the module docstring).
  """

  def __init__(self, workdir: str, *, save_every_steps: int, keep: int = 3, keep_best: int = 1,
               best_metric: str = 'ema_top1', best_mode: str = 'max'):
    """keep >= 2 leaves an older checkpoint to fall back to; keep_best=0 disables best/."""
    _check_int('save_every_steps', save_every_steps, 1)
    _check_int('keep', keep, 1)
    _check_int('keep_best', keep_best, 0)
    if best_mode not in BEST_MODES:
      raise ValueError(f'best_mode must be one of {BEST_MODES}; got {best_mode!r}.')
    if not isinstance(best_metric, str) or not best_metric:
      raise ValueError(f'best_metric must be a metric name; got {best_metric!r}.')
    self._workdir = epath.Path(workdir)
    self._best_metric, self._best_mode, self._keep_best = best_metric, best_mode, keep_best
    self._barriers = itertools.count()
    self._saving: dict[str, int] = {}    # manager directory -> step of the save last started
    self._latest = ocp.CheckpointManager(
        self._workdir / 'checkpoints', handler_registry=train_state.handler_registry(),
        options=ocp.CheckpointManagerOptions(
            # Orbax's default policy would also save the first step of a fresh run.
            save_decision_policy=policies.AnySavePolicy([
                policies.FixedIntervalPolicy(save_every_steps),
                policies.PreemptionCheckpointingPolicy()]),
            preservation_policy=policies.LatestN(keep),
            multiprocessing_options=_barrier_prefix('latest')))
    self._best = None
    if keep_best:
      metric = lambda metrics: metrics[best_metric]
      self._best = ocp.CheckpointManager(
          self._workdir / 'best', handler_registry=train_state.handler_registry(),
          options=ocp.CheckpointManagerOptions(
              best_fn=metric, best_mode=best_mode,   # best_fn makes orbax store the metrics
              preservation_policy=policies.BestN(
                  get_metric_fn=metric, reverse=best_mode == 'min', n=keep_best,
                  keep_checkpoints_without_metrics=False),
              multiprocessing_options=_barrier_prefix('best')))

  def latest_step(self) -> Optional[int]:
    """The newest step in workdir/checkpoints (not yet verified), or None."""
    return self._latest.latest_step()

  def _step_path(self, step: int) -> epath.Path:
    return self._latest.directory / str(step)

  def _write(self, manager: ocp.CheckpointManager, step: int, state: Any,
             metrics: Optional[dict[str, float]] = None) -> bool:
    try:
      started = manager.save(step, args=train_state.save_args(state), metrics=metrics, force=True)
    except Exception as e:  # pylint: disable=broad-except
      raise self._write_error(manager, e) from e
    self._saving[str(manager.directory)] = step
    return started

  def _write_error(self, manager: ocp.CheckpointManager, error: Exception) -> CheckpointWriteError:
    """Names the step whose save failed: the one in flight (errors surface one save late)."""
    step = self._saving.pop(str(manager.directory), None)
    what = 'a checkpoint' if step is None else f'step {step}'
    return CheckpointWriteError(f'Could not save {what} in {manager.directory}: '
                                f'{train_state.reason(error)}')

  def save(self, step: int, state: Any, *, force: bool = False) -> bool:
    """Starts saving `state` at `step` if due: step % save_every_steps == 0, a preemption sync point
    (all processes agree), or `force`. Returns whether it started a save (False if `step` exists).

    Returns once the arrays are copied to host; the state may then be donated. Writing continues in
    the background; errors surface at the next save or `wait_until_finished`.
    """
    if step in self._latest.all_steps() or not (force or self._latest.should_save(step)):
      return False
    return self._write(self._latest, step, state)

  def save_best(self, step: int, state: Any, metrics: Mapping[str, Any]) -> bool:
    """Saves `state` into best/ if metrics[best_metric] ranks among the best `keep_best` so far;
    returns whether it started a save.

    metrics: scalar numbers (Python or 0-d arrays), all stored with the checkpoint; equal on all
      processes.
    """
    if self._best is None:
      return False
    if self._best_metric not in metrics:
      raise ValueError(f'metrics lack best_metric {self._best_metric!r}; they have {sorted(metrics)}.')
    metrics = {name: float(value) for name, value in metrics.items()}
    value = metrics[self._best_metric]
    if not math.isfinite(value):
      logging.warning('Not saving step %d as a best checkpoint: %s is %s.', step,
                      self._best_metric, value)
      return False
    if step not in self._best.all_steps() and self._ranks_among_best(value):
      return self._write(self._best, step, state, metrics)
    return False

  def best(self) -> Optional[Tuple[float, int, epath.Path]]:
    """(best_metric's value, step, directory) of the best checkpoint in best/, or None."""
    if self._best is None:
      return None
    kept = [(m[self._best_metric], s) for s in self._best.all_steps()
            if (m := self._best.metrics(s)) and self._best_metric in m]
    if not kept:
      return None
    value, step = (max if self._best_mode == 'max' else min)(kept)
    return value, step, self._best.directory / str(step)

  def _ranks_among_best(self, value: float) -> bool:
    kept = [self._best.metrics(s) for s in self._best.all_steps()]
    kept = [m[self._best_metric] for m in kept if m and self._best_metric in m]
    if len(kept) < self._keep_best:
      return True
    return value > min(kept) if self._best_mode == 'max' else value < max(kept)

  def restore(self, abstract_state: Any) -> Tuple[Any, Optional[int]]:
    """Restores the newest checkpoint that reads back intact; returns (state, step) or (None, None).

    abstract_state: the state's pytree of jax.ShapeDtypeStruct with .sharding; restored arrays get
    those shardings. A broken checkpoint (unreadable or truncated files, missing metadata, data
    differing from its fingerprints) is skipped with a WARNING naming it; once an older one restores,
    the broken ones are moved to workdir/broken/ (never deleted), so that they neither count towards
    `keep` nor block saving their steps again. Raises IncompatibleCheckpointError if a checkpoint holds
    another state, and RuntimeError if checkpoints exist but none restores (nothing is moved then).
    """
    self.wait_until_finished()
    self._latest.reload()
    broken = []
    for step in sorted(self._latest.all_steps(), reverse=True):
      try:
        state = train_state.read(self._latest, step, abstract_state)
      except IncompatibleCheckpointError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        logging.warning('Checkpoint %s (step %d) is broken, skipping it: %s',
                        self._step_path(step), step, train_state.reason(e))
        broken.append(step)
        continue
      self._set_aside(broken)
      logging.info('Resuming from checkpoint %s at step %d', self._step_path(step), step)
      return state, step
    if broken:
      raise RuntimeError(f'No checkpoint in {self._latest.directory} restores (steps {broken}; see '
                         'the warnings above). Nothing was moved or deleted.')
    return None, None

  def _set_aside(self, steps: list[int]) -> None:
    if not steps:
      return
    if jax.process_index() == 0:
      for step in steps:
        dest = self._workdir / 'broken' / str(step)
        for n in itertools.count(1):
          if not dest.exists():
            break
          dest = self._workdir / 'broken' / f'{step}.{n}'
        dest.parent.mkdir(parents=True, exist_ok=True)
        self._step_path(step).rename(dest)
        logging.warning('Moved broken checkpoint %s to %s (kept, not deleted).',
                        self._step_path(step), dest)
    ocp.multihost.sync_global_processes(f'mnv3_jax_set_aside_{next(self._barriers)}_{steps}')
    self._latest.reload()

  def reached_preemption(self, step: int) -> bool:
    """True at orbax's multi-host preemption sync point (all processes agree on the step)."""
    return self._latest.reached_preemption(step)

  def _managers(self) -> list[ocp.CheckpointManager]:
    return [self._latest] + ([self._best] if self._best is not None else [])

  def check_for_errors(self) -> None:
    """Raises CheckpointWriteError if a background save has failed (without waiting for any)."""
    for manager in self._managers():
      try:
        manager.check_for_errors()
        if not manager.is_saving_in_progress():   # a finished save's error surfaces at its wait
          manager.wait_until_finished()
      except Exception as e:  # pylint: disable=broad-except
        raise self._write_error(manager, e) from e

  def wait_until_finished(self) -> None:
    """Blocks until background saves (and their garbage collection) are done; raises
    CheckpointWriteError if one failed."""
    for manager in self._managers():
      try:
        manager.wait_until_finished()
      except Exception as e:  # pylint: disable=broad-except
        raise self._write_error(manager, e) from e

  def close(self) -> None:
    """Releases both managers, also after a failed save (their errors were raised already)."""
    for manager in self._managers():
      try:
        manager.close()
      except Exception as e:  # pylint: disable=broad-except
        logging.warning('Closing the checkpoints in %s: %s', manager.directory,
                        train_state.reason(e))


def save_config(workdir: str, config: Any) -> None:
  """Writes an ml_collections ConfigDict to workdir/config.json (process 0 only; tmp file + rename)."""
  if jax.process_index() != 0:
    return
  workdir = epath.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  tmp = workdir / 'config.json.tmp'
  tmp.write_text(config.to_json_best_effort(indent=2, sort_keys=True) + '\n')
  tmp.replace(workdir / 'config.json')
