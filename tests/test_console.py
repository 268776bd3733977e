"""What `main.py` prints: a header, compile times, progress with ETA, evaluations and a summary;
the libraries' INFO logging hidden unless --library_logs; the parameter table in the workdir."""
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mnv3_jax import console

ROOT = Path(__file__).resolve().parents[1]
LIBRARY_INFO = re.compile(r'^I\d{4} .*(checkpoint_manager|async_checkpointer|atomicity|'
                          r'dataset_info|reader)\.py:\d+\]', re.M)


def _record(path, level):
  return logging.LogRecord('absl', level, path, 1, 'message', None, None)


@pytest.mark.parametrize('path,level,kept', [
    ('/x/site-packages/orbax/checkpoint/checkpoint_manager.py', logging.INFO, False),
    ('/x/site-packages/tensorflow_datasets/core/dataset_info.py', logging.INFO, False),
    ('/x/site-packages/orbax/checkpoint/checkpoint_manager.py', logging.WARNING, True),
    ('/x/site-packages/clu/metric_writers/logging_writer.py', logging.INFO, False),
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


# The lines of a 4-step demo on the suite's 8 devices, in order; nothing else at INFO.
DEMO_LINES = [
    r'MobileNetV3-Small 1\.0 at 32x32, 10 classes: 1\.5\dM params, 2\.\d\dM MACs per image',
    r'data: digits, train 1497 / test 300 examples; global batch 64 on 8 devices \(1 host, cpu\)',
    r'4 steps \(23 per epoch, 0\.174 epochs\), fresh start in \S+',
    r'compiling the train step \.\.\.',
    r'compiled the train step in \d+\.\d s',
    r'step 2/4  50%  loss \d\.\d{3}  top1 \d+\.\d%  lr \d\.\d\de-\d\d  \d+\.\d steps/s  ETA 0:\d\d',
    r'step 4/4 100%  loss \d\.\d{3}  top1 \d+\.\d%  lr \d\.\d\de-\d\d  \d+\.\d steps/s  ETA 0:00',
    r'compiling the evaluation step \.\.\.',
    r'eval step 4/4  top1 \d+\.\d%  EMA top1 \d+\.\d% \(best\)  300 images in \d+\.\d s '
    r'\(with compile\)  saved checkpoints/4, best/4( in \d+\.\d s)?',
    r'done: 4 steps in 0:\d\d; final EMA top1 \d+\.\d% \(raw \d+\.\d%\); best EMA top1 \d+\.\d% '
    r'at step 4: \S+/best/4',
]


def test_demo_prints_header_progress_evaluation_and_summary_only(tmp_path):
  quiet = _demo(tmp_path / 'quiet')
  lines = quiet.splitlines()
  assert len(lines) == len(DEMO_LINES), quiet
  for line, pattern in zip(lines, DEMO_LINES):
    assert re.fullmatch(r'\d\d:\d\d:\d\d ' + pattern, line), (pattern, line)
  assert not LIBRARY_INFO.search(quiet)
  assert 'block_0/se/reduce/kernel' in (tmp_path / 'quiet' / 'parameters.txt').read_text()
  loud = _demo(tmp_path / 'loud', '--library_logs')
  assert LIBRARY_INFO.search(loud)
