"""Faults around a run that must end it at once and in one piece (issue 16), in real processes:
a checkpoint that cannot be written, a second run on the same workdir, a damaged checkpoint handed
to `init_from` or to export."""
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mnv3_jax.train import trainer
from tests.processes import ENV, ROOT, main_processes  # pylint: disable=unused-import  (a fixture)
from tests.support import main_flags, tiny_config

NUM_STEPS = 8


def run_config(data_dir, **overrides):
  return tiny_config(data_dir, **{'num_train_steps': NUM_STEPS, 'checkpoint_every_steps': 4,
                                  'log_every_steps': 1, **overrides})


@pytest.fixture(scope='module')
def data_dir(digits_dir):
  return digits_dir


@pytest.fixture(scope='module')
def finished(data_dir, tmp_path_factory):
  """A finished run's workdir (best/ and checkpoints/)."""
  workdir = tmp_path_factory.mktemp('finished')
  trainer.train_and_evaluate(run_config(data_dir), str(workdir))
  return workdir


def _files(root: Path) -> dict:
  return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
          for p in sorted(root.rglob('*')) if p.is_file()}


def _damaged_copy(finished: Path, tmp_path: Path) -> tuple[Path, Path]:
  """(a copy of the finished workdir, its best step) with one bit flipped in that step's arrays."""
  damaged = tmp_path / 'damaged'
  shutil.copytree(finished, damaged)
  best = next((damaged / 'best').iterdir())
  data = max((best / 'state').rglob('d/*'), key=lambda p: p.stat().st_size)
  raw = bytearray(data.read_bytes())
  raw[len(raw) // 2] ^= 0x40
  data.write_bytes(bytes(raw))
  return damaged, best


def test_a_failed_save_ends_the_run_within_seconds_naming_the_path(data_dir, tmp_path,
                                                                   main_processes):
  workdir = tmp_path / 'run'
  run = main_processes(main_flags(run_config(data_dir)), workdir)
  run.wait_for(r' step +1/')
  shutil.rmtree(workdir / 'checkpoints')
  (workdir / 'checkpoints').write_text('not a directory\n')   # the save at step 4 cannot mkdir
  status, log = run.wait(timeout=90)
  assert status != 0, log[-3000:]
  assert f'Could not save step 4 in {workdir / "checkpoints"}' in log, log[-3000:]
  assert 'Not a directory' in log
  assert not (workdir / '.lock').exists()            # released on the way out


def test_a_second_run_on_a_workdir_stops_at_once_naming_the_first(data_dir, tmp_path,
                                                                  main_processes):
  workdir = tmp_path / 'run'
  flags = main_flags(run_config(data_dir))
  first = main_processes(flags, workdir)
  first.wait_for(r' step +1/')
  second = main_processes(flags, workdir)
  started = time.monotonic()
  status, log = second.wait(timeout=120)
  assert status != 0 and time.monotonic() - started < 60, log[-3000:]
  assert f'pid {first.proc.pid}' in log and 'in use by another training run' in log, log
  assert not any('Traceback' in line for line in log.splitlines()), log
  status, log = first.wait(timeout=600)
  assert status == 0, log[-3000:]
  assert f'done: {NUM_STEPS} steps' in log
  assert len(list(workdir.glob('events.out.tfevents.*'))) == 1   # the second wrote none


def test_init_from_a_damaged_checkpoint_is_refused_before_anything_is_written(
    data_dir, finished, tmp_path):
  damaged, best = _damaged_copy(finished, tmp_path)
  workdir = tmp_path / 'new'
  out = subprocess.run(
      [sys.executable, 'main.py', *main_flags(run_config(data_dir, init_from=str(damaged))),
       f'--workdir={workdir}'], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600,
      check=False)
  assert out.returncode != 0, out.stderr[-3000:]
  error = out.stderr.strip().splitlines()[-1]
  assert error.startswith('error: ') and str(best) in error and 'fingerprints' in error, error
  assert not workdir.exists() or not any(workdir.iterdir())


def test_export_of_a_damaged_checkpoint_is_refused(finished, tmp_path):
  damaged, best = _damaged_copy(finished, tmp_path)
  out_dir = tmp_path / 'export'
  out = subprocess.run(
      [sys.executable, '-m', 'mnv3_jax.export', f'--workdir={damaged}', f'--out={out_dir}'],
      cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600, check=False)
  assert out.returncode != 0, out.stderr[-3000:]
  error = out.stderr.strip().splitlines()[-1]
  assert error.startswith('error: ') and str(best) in error and 'fingerprints' in error, error
  assert not out_dir.exists()


def test_ctrl_c_stops_like_sigterm_and_a_second_one_aborts(data_dir, tmp_path, main_processes):
  flags = main_flags(run_config(data_dir))
  workdir = tmp_path / 'run'
  run = main_processes(flags, workdir)
  run.wait_for(r' step +2/')
  run.proc.send_signal(signal.SIGINT)
  status, log = run.wait(timeout=60)
  assert status == 0, log[-3000:]
  assert 'Ctrl-C: stopping after this step' in log
  stopped = int(re.search(r'stopped at step (\d+) \(stop requested\)', log).group(1))
  assert (workdir / 'checkpoints' / str(stopped)).is_dir()
  assert 'Traceback' not in log

  run = main_processes(flags, workdir)
  run.wait_for(r' step +\d+/')
  run.proc.send_signal(signal.SIGINT)
  time.sleep(0.3)                      # two signals in a row would merge into one
  run.proc.send_signal(signal.SIGINT)
  status, log = run.wait(timeout=60)
  assert status == 130, log[-3000:]
  assert 'Ctrl-C again: aborting now' in log
  assert (workdir / 'checkpoints' / str(stopped)).is_dir()   # the complete one is still there
