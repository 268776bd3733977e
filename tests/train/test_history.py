"""mnv3_jax.train.history reads back what the trainer's clu writer wrote, including a resumed run."""
import os
import time

import numpy as np
import pytest
from clu import metric_writers

from mnv3_jax.train import history


def _write(workdir, points, hparams=None):
  """One writer session (a run, or its resumption): points = [(step, {tag: value})]."""
  writer = metric_writers.create_default_writer(workdir)
  if hparams:
    writer.write_hparams(hparams)
  for step, scalars in points:
    writer.write_scalars(step, scalars)
  writer.close()


def test_reads_curves_sorted_by_step(tmp_path):
  _write(str(tmp_path), [(20, {'ema_top1': 0.5, 'train_loss': 2.0}),
                         (10, {'ema_top1': 0.25}),
                         (30, {'ema_top1': 0.75, 'train_loss': 1.5})],
         hparams={'model.activation': 'relu', 'seed': 3})
  curves = history.read_scalars(str(tmp_path))
  assert set(curves) == {'ema_top1', 'train_loss'}     # hparams are not scalars
  steps, values = curves['ema_top1']
  np.testing.assert_array_equal(steps, [10, 20, 30])
  np.testing.assert_allclose(values, [0.25, 0.5, 0.75])
  assert steps.dtype == np.int64 and values.dtype == np.float64
  np.testing.assert_array_equal(curves['train_loss'][0], [20, 30])


def test_resumed_run_overrides_rewritten_steps(tmp_path):
  _write(str(tmp_path), [(1, {'ema_top1': 0.1}), (2, {'ema_top1': 0.2}), (3, {'ema_top1': 0.3})])
  time.sleep(1.1)                           # the event file's name holds whole seconds
  # Resumed from a checkpoint at step 2: step 3 is computed again, then training goes on.
  _write(str(tmp_path), [(3, {'ema_top1': 0.35}), (4, {'ema_top1': 0.4})])
  assert len(history.event_files(str(tmp_path))) == 2
  steps, values = history.read_scalars(str(tmp_path))['ema_top1']
  np.testing.assert_array_equal(steps, [1, 2, 3, 4])
  np.testing.assert_allclose(values, [0.1, 0.2, 0.35, 0.4])


def test_bad_workdirs(tmp_path):
  with pytest.raises(ValueError, match='not a directory'):
    history.read_scalars(str(tmp_path / 'missing'))
  os.makedirs(tmp_path / 'empty')
  with pytest.raises(ValueError, match='holds no events'):
    history.read_scalars(str(tmp_path / 'empty'))
