"""Checks a training config before anything is compiled, any data is read or the workdir written.

Every failure is a ValueError naming the bad value by its config field (`keep_checkpoints`,
`data.crop_area_range`, ...) and what is allowed (or, for missing data, where the pipeline looked
and how to prepare the dataset). `check_config` runs every check, the resume check included,
before it creates the workdir; the trainer calls it first.
"""
import json
import os
import tempfile
from typing import Any, NamedTuple, Optional

import ml_collections
from absl import logging
from etils import epath

from mnv3_jax import config_fields as cf
from mnv3_jax.parallel import sharding
from mnv3_jax.tasks import base, classification, registry
from mnv3_jax.train import init_from, steps

# Every field of every task, but bn_stats (steps.check_bn_stats) and init_from's target
# (`init_from.read`); the task checks its own fields (data.*, model.*, ...: `Task.check_config`).
COMMON_FIELDS = (
    ('task', f'one of {list(registry.TASKS)}', lambda v: v in registry.TASKS),
    ('seed', 'an integer in [0, 2**32)', cf.integer(lambda v: 0 <= v < 2**32)),
    ('batch_size', 'an integer >= 1', cf.integer(lambda v: v >= 1)),
    ('num_epochs', 'a finite number > 0', cf.real(lambda v: v > 0)),
    ('num_train_steps', 'an integer >= 1 (it overrides num_epochs), or -1 (num_epochs decides)',
     cf.integer(lambda v: v == -1 or v >= 1)),
    ('init_from', "a path ('' = none)", lambda v: isinstance(v, str)),
    ('optim.base_learning_rate', 'a finite number > 0', cf.real(lambda v: v > 0)),
    ('optim.base_batch_size', 'an integer >= 1', cf.integer(lambda v: v >= 1)),
    ('optim.warmup_epochs', 'a finite number >= 0', cf.real(lambda v: v >= 0)),
    ('optim.warmup_init_fraction', 'a number in [0, 1]', cf.real(lambda v: 0 <= v <= 1)),
    ('optim.decay_rate', 'a number in (0, 1]', cf.real(lambda v: 0 < v <= 1)),
    ('optim.decay_epochs', 'a finite number > 0', cf.real(lambda v: v > 0)),
    ('optim.staircase', 'True or False', cf.boolean),
    ('optim.rmsprop_decay', 'a number in [0, 1)', cf.real(lambda v: 0 <= v < 1)),
    ('optim.momentum', 'a number in [0, 1)', cf.real(lambda v: 0 <= v < 1)),
    ('optim.epsilon', 'a finite number > 0', cf.real(lambda v: v > 0)),
    ('optim.weight_decay', 'a finite number >= 0', cf.real(lambda v: v >= 0)),
    ('optim.initial_scale', 'a finite number >= 0', cf.real(lambda v: v >= 0)),
    ('quant', "'none' or 'qat'", lambda v: v in ('none', 'qat')),
    ('qat.freeze_bn_epochs', 'a finite number >= 0', cf.real(lambda v: v >= 0)),
    ('qat.freeze_ranges_epochs', 'a finite number >= 0', cf.real(lambda v: v >= 0)),
    ('qat.range_decay', 'a number in [0, 1)', cf.real(lambda v: 0 <= v < 1)),
    ('label_smoothing', 'a number in [0, 1)', cf.real(lambda v: 0 <= v < 1)),
    # 1 is allowed: the EMA then follows TF's warm-up decay (1 + t) / (10 + t) throughout.
    ('ema_decay', 'a number in [0, 1]', cf.real(lambda v: 0 <= v <= 1)),
    ('log_every_steps', 'an integer >= 1', cf.integer(lambda v: v >= 1)),
    ('eval_every_steps', 'an integer >= 1', cf.integer(lambda v: v >= 1)),
    ('checkpoint_every_steps', 'an integer >= 1', cf.integer(lambda v: v >= 1)),
    ('keep_checkpoints', 'an integer >= 1', cf.integer(lambda v: v >= 1)),
    ('keep_best', 'an integer >= 0 (0: no best/ checkpoints)', cf.integer(lambda v: v >= 0)),
    ('profile_first_step', 'an integer >= 0, or -1 (no profile)', cf.integer(lambda v: v >= -1)),
    ('allow_batch_size_change', 'True or False', cf.boolean),
)
# Those of classification, the default task, too (tests check that every settable field of
# configs/default.py is named here).
FIELDS = COMMON_FIELDS + classification.FIELDS


def check_fields(config: ml_collections.ConfigDict) -> None:
  """Checks each of `COMMON_FIELDS` in `config`: present, of its type and in its range."""
  cf.check_fields(config, COMMON_FIELDS)


def _check_data_dir(data_dir: Optional[str]) -> None:
  if data_dir and '://' not in data_dir and os.path.exists(data_dir) and not os.path.isdir(
      data_dir):
    raise ValueError(f'Invalid data.data_dir {data_dir!r}: it is a file; allowed: a directory '
                     '(or None for the TFDS default).')


def check_workdir(workdir: str) -> None:
  """Creates `workdir` if needed and proves it writable (local or remote path)."""
  path = epath.Path(workdir)
  try:
    path.mkdir(parents=True, exist_ok=True)
    if os.path.isdir(workdir):     # local: a real write test; remote stores check on write
      with tempfile.NamedTemporaryFile(dir=workdir):
        pass
  except OSError as e:
    raise ValueError(f'workdir {workdir!r} is not writable ({e}); allowed: a directory this '
                     'process can create and write, or a path below one.') from e


def _latest_step(workdir: str) -> Optional[int]:
  """The newest finalized step in workdir/checkpoints (what a resume restores first), or None."""
  path = epath.Path(workdir) / 'checkpoints'
  steps_found = [int(p.name) for p in path.iterdir() if p.name.isdigit()] if path.is_dir() else []
  return max(steps_found, default=None)


def check_resume(config: ml_collections.ConfigDict, workdir: str,
                 num_train_examples: int) -> None:
  """Refuses to resume `workdir` with another global batch size than its config.json's.

  With `config.allow_batch_size_change` it logs one warning instead: the steps per epoch before
  and after, and the epoch (schedule position) the restored step stands for under each. Nothing
  happens for a fresh workdir or one without checkpoints.
  """
  config_file = epath.Path(workdir) / 'config.json'
  step = _latest_step(workdir)
  if step is None or not config_file.exists():
    return
  try:
    saved = json.loads(config_file.read_text())['batch_size']
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(f'{config_file} is not a run config with a batch_size ({e!r}); allowed: '
                     'the JSON config a training run wrote.') from e
  if saved == config.batch_size:
    return
  before, after = (max(1, num_train_examples // b) for b in (saved, config.batch_size))
  if not config.allow_batch_size_change:
    raise ValueError(
        f'Invalid batch_size {config.batch_size}: workdir {workdir} was trained with batch_size '
        f'{saved} (its config.json); allowed: {saved}, or set '
        '--config.allow_batch_size_change=True to resume with the new batch size (steps per '
        f'epoch {before} -> {after}).')
  logging.warning(
      'Resuming %s with batch_size %d instead of %d (allow_batch_size_change): steps per epoch '
      '%d -> %d; the restored step %d, epoch %.2f so far, is now epoch %.2f of the schedule.',
      workdir, config.batch_size, saved, before, after, step, step / before, step / after)


class Checked(NamedTuple):
  """What the checks had to read, for the run to use rather than read again."""
  info: Any                        # the task's dataset info (num_classes, split sizes)
  init_variables: Optional[dict]   # init_from's verified weights (`init_from.read`), or None
  task: base.Task


def check_config(config: ml_collections.ConfigDict, workdir: str, mesh) -> Checked:
  """Validates `config` for training in `workdir` on `mesh`: the common fields, then the task's
  (its data is opened only to count classes and examples).

  Only once everything else passed is the workdir created (if new) and proved writable.
  """
  check_fields(config)
  task = registry.get(config)
  _check_data_dir(config.data.get('data_dir'))
  info = task.check_config()
  sharding.check_batch_size(config.batch_size, mesh)
  steps.check_bn_stats(config.bn_stats)
  initial = init_from.read(config, task, task.build_model(info))
  check_resume(config, workdir, info.num_train_examples)
  check_workdir(workdir)
  return Checked(info, initial, task)
