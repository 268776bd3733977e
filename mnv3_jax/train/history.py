"""A training run's metric curves, read back from the TensorBoard event files in its workdir.

`train.train_and_evaluate` writes its scalars with clu's metric writer (TensorFlow summaries):
train_* every `log_every_steps`, eval_* / ema_* at each evaluation, steps_per_sec. A resumed run
appends a new event file; for a step written twice (the steps after the last checkpoint of an
interrupted run) the later write wins, as the resumed run is the one whose weights were kept.
"""
import glob
import os
from typing import Dict, Tuple

import numpy as np
from tensorboard.backend.event_processing import event_file_loader
from tensorboard.util import tensor_util

EVENT_GLOB = 'events.out.tfevents.*'


def event_files(workdir: str) -> list:
  """The event files directly in `workdir` (not the profiler's), oldest first."""
  if not os.path.isdir(workdir):
    raise ValueError(f'workdir {workdir!r} is not a directory.')
  files = glob.glob(os.path.join(workdir, EVENT_GLOB))
  if not files:
    raise ValueError(f'workdir {workdir!r} holds no {EVENT_GLOB} files: not a training run, '
                     'or one that has not written metrics yet.')
  return sorted(files, key=os.path.getmtime)


def read_scalars(workdir: str) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
  """Every scalar curve of the run in `workdir`.

  Returns:
    {tag: (steps, values)}: int64 steps, strictly increasing, and float64 values of equal length,
    e.g. 'ema_top1' (fraction of eval images right, 0..1), 'train_loss', 'steps_per_sec'.
    Non-scalar summaries (hparams, text) are skipped.
  """
  latest: Dict[str, Dict[int, Tuple[float, float]]] = {}
  for path in event_files(workdir):
    for event in event_file_loader.EventFileLoader(path).Load():
      for value in event.summary.value:
        kind = value.WhichOneof('value')
        if kind == 'simple_value':
          number = float(value.simple_value)
        elif kind == 'tensor' and value.metadata.plugin_data.plugin_name == 'scalars':
          number = float(tensor_util.make_ndarray(value.tensor))
        else:
          continue
        points = latest.setdefault(value.tag, {})
        previous = points.get(event.step)
        if previous is None or event.wall_time >= previous[0]:
          points[event.step] = (event.wall_time, number)
  curves = {}
  for tag, points in latest.items():
    steps = np.array(sorted(points), dtype=np.int64)
    curves[tag] = (steps, np.array([points[s][1] for s in steps], dtype=np.float64))
  return curves
