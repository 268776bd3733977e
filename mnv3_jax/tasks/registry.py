"""`config.task` -> the task the trainer runs (mnv3_jax/tasks/base.py has the interface)."""
import ml_collections

from mnv3_jax.tasks import base
from mnv3_jax.tasks.classification import Classification
from mnv3_jax.tasks.detection.task import Detection
from mnv3_jax.tasks.segmentation.task import Segmentation

TASKS = {task.name: task for task in (Classification, Segmentation, Detection)}


def get(config: ml_collections.ConfigDict) -> base.Task:
  """The task of `config` (config.task; a config without the field is a classification one)."""
  name = config.get('task', Classification.name)
  if name not in TASKS:
    raise ValueError(f'Invalid task {name!r}; allowed: {list(TASKS)}.')
  return TASKS[name](config)
