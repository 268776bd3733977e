"""What `main.py` prints: the libraries' INFO logging hidden unless --library_logs, the parameter
table in the workdir."""
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mnv3_jax.train import console

ROOT = Path(__file__).resolve().parents[2]
LIBRARY_INFO = re.compile(r'^I\d{4} .*(checkpoint_manager|async_checkpointer|atomicity|'
                          r'dataset_info|reader)\.py:\d+\]', re.M)


def _record(path, level):
  return logging.LogRecord('absl', level, path, 1, 'message', None, None)


@pytest.mark.parametrize('path,level,kept', [
    ('/x/site-packages/orbax/checkpoint/checkpoint_manager.py', logging.INFO, False),
    ('/x/site-packages/tensorflow_datasets/core/dataset_info.py', logging.INFO, False),
    ('/x/site-packages/orbax/checkpoint/checkpoint_manager.py', logging.WARNING, True),
    ('/x/site-packages/clu/metric_writers/logging_writer.py', logging.INFO, True),
    ('/x/site-packages/clu/periodic_actions.py', logging.INFO, True),
    (str(ROOT / 'mnv3_jax' / 'train' / 'trainer.py'), logging.INFO, True),
    (str(ROOT / 'main.py'), logging.INFO, True),
])
def test_library_info_filter(path, level, kept):
  assert console.LibraryInfoFilter().filter(_record(path, level)) is kept


def _demo(workdir, *extra):
  flags = ['--config=configs/demo.py', f'--workdir={workdir}', '--config.num_train_steps=4',
           '--config.eval_every_steps=4', '--config.checkpoint_every_steps=4',
           '--config.log_every_steps=2', *extra]
  out = subprocess.run([sys.executable, 'main.py', *flags], cwd=ROOT, capture_output=True,
                       text=True, env=dict(os.environ), timeout=600, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stderr


def test_demo_log_hides_library_info_unless_asked(tmp_path):
  quiet = _demo(tmp_path / 'quiet')
  assert not LIBRARY_INFO.search(quiet), LIBRARY_INFO.search(quiet).group(0)
  assert 'trainable parameters; per-array table in' in quiet
  assert 'block_0/se/reduce/kernel' in (tmp_path / 'quiet' / 'parameters.txt').read_text()
  assert 'block_0/se/reduce/kernel' not in quiet           # the table is not in the log
  assert re.search(r'\] \[4\] train_.*train_loss=', quiet)    # the metric lines still are
  assert re.search(r'Eval at step 4: top1', quiet)
  loud = _demo(tmp_path / 'loud', '--library_logs')
  assert LIBRARY_INFO.search(loud)
