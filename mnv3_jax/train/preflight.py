"""Checks a training config before anything is compiled or any data is read.

Every failure is a ValueError naming the bad value and what is allowed (or, for missing data,
where the pipeline looked and how to prepare the dataset).
"""
import math
import os
import tempfile

import ml_collections
from etils import epath

from mnv3_jax.data import input_pipeline
from mnv3_jax.interop import pretrained
from mnv3_jax.parallel import sharding
from mnv3_jax.train import steps
from mnv3_jax.model import MobileNetV3


def _positive(name: str, value) -> None:
  if (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0
      or not math.isfinite(value)):
    raise ValueError(f'Invalid {name} {value!r}; allowed: a finite number > 0.')


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


def check_config(config: ml_collections.ConfigDict, workdir: str, mesh):
  """Validates `config` for training in `workdir` on `mesh`; returns the dataset's info."""
  options = config.model.to_dict()
  width = options.get('width')
  if isinstance(width, float) and not math.isfinite(width):
    raise ValueError(f'Invalid model.width {width!r}; allowed: a finite number > 0.')
  model = MobileNetV3(**options)               # validates every model option ('auto' dtype too)
  if config.data.image_size < 32:
    raise ValueError(f'Invalid data.image_size {config.data.image_size!r}; allowed: an '
                     'integer >= 32.')
  sharding.check_batch_size(config.batch_size, mesh)
  steps.check_bn_stats(config.bn_stats)
  _positive('optim.base_learning_rate', config.optim.base_learning_rate)
  _positive('num_epochs', config.num_epochs)
  for name in ('log_every_steps', 'eval_every_steps', 'checkpoint_every_steps'):
    _positive(name, config[name])
  check_workdir(workdir)
  if config.get('init_from'):
    pretrained.check_init_from(config.init_from, model)
  info = input_pipeline.get_dataset_info(config.data)
  if info.num_classes != config.model.num_classes:
    raise ValueError(f'model.num_classes {config.model.num_classes} does not match dataset '
                     f'{config.data.dataset!r}, which has {info.num_classes} classes; set '
                     f'--config.model.num_classes={info.num_classes}.')
  return info
