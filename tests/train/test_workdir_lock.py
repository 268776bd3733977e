"""The workdir lock against real processes: a `python -c` holder that locks and sleeps, killed or
interrupted as a user or a scheduler would; this test process is the second run."""
import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mnv3_jax.train import workdir_lock

ROOT = Path(__file__).resolve().parents[2]
HOLDER = """
import sys, time
from mnv3_jax.train import workdir_lock
lock = workdir_lock.acquire(sys.argv[1], use_flock=sys.argv[2] == 'flock', heartbeat_s=0.2,
                            stale_after_s=5.0, settle_s=0.0)
with lock:
  print('held', flush=True)
  time.sleep(60)
"""


@pytest.fixture
def holder():
  """start(workdir, mode) -> a running process that holds workdir's lock ('flock'/'heartbeat')."""
  procs = []

  def start(workdir, mode='flock'):
    proc = subprocess.Popen([sys.executable, '-c', HOLDER, str(workdir), mode, '--marker=xyz'],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs.append(proc)
    line = proc.stdout.readline()
    assert line == 'held\n', proc.communicate()[1] if proc.poll() is not None else line
    return proc

  yield start
  for proc in procs:
    if proc.poll() is None:
      proc.kill()
    proc.communicate()


def _snapshot(workdir: Path) -> dict:
  """Every path under workdir with its modification time and, for files, its bytes."""
  return {p: (p.stat().st_mtime_ns, p.is_file() and p.read_bytes()) for p in workdir.rglob('*')}


def _kill(proc) -> None:
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=10)


def test_second_run_stops_naming_the_holder_and_leaves_the_workdir_as_it_was(holder, tmp_path):
  proc = holder(tmp_path)
  (tmp_path / 'checkpoints').mkdir()
  (tmp_path / 'checkpoints' / 'config.json').write_text('{}')
  before = _snapshot(tmp_path)
  with pytest.raises(workdir_lock.WorkdirBusyError) as info:
    workdir_lock.acquire(tmp_path)
  message = str(info.value)
  assert '\n' not in message
  for part in (f'pid {proc.pid}', socket.gethostname(), '--marker=xyz',
               str(tmp_path / workdir_lock.LOCK_NAME), f'kill {proc.pid}', '--workdir'):
    assert part in message, (part, message)
  assert info.value.holder['pid'] == proc.pid
  assert _snapshot(tmp_path) == before
  assert proc.poll() is None


def test_lock_of_a_killed_run_is_taken_over_with_a_warning(holder, tmp_path, caplog):
  proc = holder(tmp_path)
  _kill(proc)
  with workdir_lock.acquire(tmp_path) as lock:
    assert lock.held
    assert json.loads(Path(lock.path).read_text())['pid'] == os.getpid()
  takeover = [r.getMessage() for r in caplog.records if 'Taking over' in r.getMessage()]
  assert len(takeover) == 1 and f'pid {proc.pid} ' in takeover[0], caplog.text
  assert not list(tmp_path.iterdir())


def test_released_on_exception_and_on_keyboard_interrupt(holder, tmp_path, caplog):
  with pytest.raises(ZeroDivisionError):
    with workdir_lock.acquire(tmp_path):
      _ = 1 / 0
  assert not list(tmp_path.iterdir())
  _kill(holder(tmp_path))       # proves a real process could take it
  proc = holder(tmp_path / 'interrupted')
  proc.send_signal(signal.SIGINT)
  assert 'KeyboardInterrupt' in proc.communicate(timeout=10)[1]
  assert not list((tmp_path / 'interrupted').iterdir())   # released by the `with`, not the kernel
  caplog.clear()
  workdir_lock.acquire(tmp_path / 'interrupted').release()
  assert 'Taking over' not in caplog.text


def test_not_reentrant_and_release_is_idempotent(tmp_path, caplog):
  lock = workdir_lock.acquire(tmp_path)
  with pytest.raises(workdir_lock.WorkdirBusyError, match='this process .* not reentrant'):
    workdir_lock.acquire(tmp_path)
  assert lock.held and Path(lock.path).exists()
  lock.release()
  lock.release()
  workdir_lock.acquire(tmp_path).release()
  assert 'Taking over' not in caplog.text


def test_only_process_zero_locks(holder, tmp_path):
  holder(tmp_path)
  before = _snapshot(tmp_path)
  with workdir_lock.acquire(tmp_path, process_index=1) as lock:
    assert not lock.held and lock.path is None
  assert _snapshot(tmp_path) == before


def _holder_file(path: Path) -> dict:
  """The lock file's JSON; the heartbeat rewrites a local file in place, so a read can catch it
  empty or half-written: retry (the module's own reader does the same)."""
  for _ in range(100):
    try:
      return json.loads(path.read_text())
    except ValueError:
      time.sleep(0.01)
  return json.loads(path.read_text())


def test_heartbeat_lock_refuses_a_live_holder_and_takes_over_a_dead_one(holder, tmp_path, caplog):
  proc = holder(tmp_path, 'heartbeat')
  path = tmp_path / workdir_lock.LOCK_NAME
  beat, deadline = _holder_file(path)['heartbeat'], time.time() + 10
  while _holder_file(path)['heartbeat'] == beat:   # the daemon thread refreshes it
    assert time.time() < deadline, 'no heartbeat in 10 s (heartbeat_s=0.2)'
    time.sleep(0.1)
  with pytest.raises(workdir_lock.WorkdirBusyError, match=f'pid {proc.pid} .*stale 300 s after'):
    workdir_lock.acquire(tmp_path, use_flock=False, settle_s=0)
  _kill(proc)
  with workdir_lock.acquire(tmp_path, use_flock=False, settle_s=0.1) as lock:
    assert _holder_file(path)['pid'] == os.getpid() and lock.held
  assert f'its process {proc.pid} is gone' in caplog.text
  assert not path.exists()


def test_heartbeat_lock_of_another_host_is_stale_only_after_the_timeout(tmp_path, caplog):
  path = tmp_path / workdir_lock.LOCK_NAME
  other = dict(host='other-host', pid=1, started='2026-12-01T10:00:00+00:00', argv=['main.py'])
  path.write_text(json.dumps(dict(other, heartbeat=time.time() - 2)))
  before = _snapshot(tmp_path)
  with pytest.raises(workdir_lock.WorkdirBusyError, match='pid 1 on host other-host'):
    workdir_lock.acquire(tmp_path, use_flock=False, stale_after_s=5, heartbeat_s=1, settle_s=0)
  assert _snapshot(tmp_path) == before
  path.write_text(json.dumps(dict(other, heartbeat=time.time() - 10)))
  workdir_lock.acquire(tmp_path, use_flock=False, stale_after_s=5, heartbeat_s=1,
                       settle_s=0).release()
  assert re.search(r'no heartbeat for 1\d s, stale after 5 s\): pid 1 on host other-host',
                   caplog.text), caplog.text


def test_filesystem_without_flock_falls_back_to_the_heartbeat_lock(tmp_path, monkeypatch, caplog):
  def refuse(fd, operation):
    raise OSError(errno.ENOLCK, 'No locks available')

  monkeypatch.setattr(workdir_lock.fcntl, 'flock', refuse)
  with workdir_lock.acquire(tmp_path, settle_s=0) as lock:
    assert 'heartbeat' in json.loads(Path(lock.path).read_text())
  assert 'refuses flock' in caplog.text and not list(tmp_path.iterdir())


def test_lock_released_while_being_taken_is_taken_on_the_new_file(tmp_path, monkeypatch):
  first = workdir_lock.acquire(tmp_path)
  real_flock = workdir_lock.fcntl.flock

  def release_first_then_flock(fd, operation):   # the holder ends between our open and flock
    first.release()
    return real_flock(fd, operation)

  monkeypatch.setattr(workdir_lock.fcntl, 'flock', release_first_then_flock)
  second = workdir_lock.acquire(tmp_path)
  monkeypatch.undo()
  assert json.loads(Path(second.path).read_text())['pid'] == os.getpid()   # a file, not unlinked
  with pytest.raises(workdir_lock.WorkdirBusyError):
    workdir_lock.acquire(tmp_path)
  second.release()


@pytest.mark.parametrize('kwargs, bad', [
    (dict(process_index=-1), 'process_index -1'), (dict(process_index=True), 'process_index True'),
    (dict(heartbeat_s=300.0), 'heartbeat_s 300.0'), (dict(settle_s=float('nan')), 'settle_s nan')])
def test_bad_arguments_are_named_before_anything_is_written(tmp_path, kwargs, bad):
  with pytest.raises(ValueError, match=f'Invalid {bad}; allowed'):
    workdir_lock.acquire(tmp_path / 'run', **kwargs)
  assert not list(tmp_path.iterdir())
