"""Real `python main.py` processes for the tests: started, read line by line, waited for, killed.

`main_processes` is a pytest fixture (import it into a test module to use it) that starts them and
kills any still running at the end of the test.
"""
import os
import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import pytest

ROOT = Path(__file__).resolve().parents[1]
# This process's XLA flags and compilation cache: the subprocesses reuse its compiled programs.
# Min compile time 0: orbax's first save compiles ~100 tiny slicing programs (~20 s on a busy
# 2-core machine); cached by the first process, the next ones' SIGTERM saves are quick.
ENV = dict(os.environ, JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
           JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0', TF_CPP_MIN_LOG_LEVEL='2')

class MainProcess:
  """`python main.py` with these flags; its log is read line by line in a thread."""

  def __init__(self, flags, workdir, log_file):
    self.lines, self.log, self.log_file = queue.Queue(), [], log_file
    self.proc = subprocess.Popen(
        [sys.executable, 'main.py', *flags, f'--workdir={workdir}'], cwd=ROOT, env=ENV,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    threading.Thread(target=self._read, daemon=True).start()

  def _drain(self):
    while not self.lines.empty():
      line = self.lines.get()
      if line is not None:
        self.log.append(line)
    self.log_file.write_text(''.join(self.log))

  def _read(self):
    for line in self.proc.stderr:
      self.lines.put(line)
    self.lines.put(None)

  def wait_for(self, pattern, timeout=600):
    """The first match of `pattern` in the lines not read yet; fails at exit or after timeout."""
    deadline = time.monotonic() + timeout
    while True:
      line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
      if line is None:
        self.log_file.write_text(''.join(self.log))
        pytest.fail(f'main.py exited ({self.proc.wait()}) before {pattern!r}:\n'
                    + ''.join(self.log[-30:]))
      self.log.append(line)
      match = re.search(pattern, line)
      if match:
        return match

  def wait(self, timeout):
    """Exit status, the whole log; fails if the process is still running after `timeout` s."""
    try:
      status = self.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      self.proc.kill()
      self._drain()
      pytest.fail(f'main.py did not exit within {timeout} s:\n' + ''.join(self.log[-30:]))
    while (line := self.lines.get(timeout=60)) is not None:
      self.log.append(line)
    self.log_file.write_text(''.join(self.log))
    return status, ''.join(self.log)

  def kill(self):
    if self.proc.poll() is None:
      self.proc.kill()
      self.proc.wait()
    self._drain()


@pytest.fixture
def main_processes():
  started = []

  def start(flags, workdir):
    started.append(MainProcess(flags, workdir, workdir.parent / f'main_{len(started)}.log'))
    return started[-1]

  yield start
  for process in started:
    process.kill()


