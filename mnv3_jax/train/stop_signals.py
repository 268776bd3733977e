"""SIGTERM and Ctrl-C (SIGINT) as a request to stop cleanly: finish the step, checkpoint, exit.

`StopFlag` turns the first SIGTERM or SIGINT into a flag the train loop polls at step boundaries;
a second Ctrl-C aborts at once (exit status 130: the newest complete checkpoint is intact, a save
in flight is left as a temporary folder that restore never reads).

Python runs signal handlers only in the main thread, between bytecodes: while that thread is inside
a long C++ call (the first XLA compile of a big model can take minutes on CPU) the handler waits.
So the C-level handler also writes the signal number to a pipe (`signal.set_wakeup_fd`), and a
watcher thread reads it at once: if no step has been trained in this process yet, nothing is lost
by exiting, and it exits (status 0 for SIGTERM, 130 for Ctrl-C) within a second; otherwise it
raises the flag for the loop.

With several processes, jax's preemption service catches SIGTERM instead and all processes stop at
the same step through orbax's `reached_preemption`; a Python handler would replace jax's, and a
flag raised on one process only would leave the others waiting for it in the next collective. So
Ctrl-C, too, keeps its default there (the process ends; the others notice through the heartbeat).
"""
import os
import signal
import threading

import jax
from absl import logging

_NAMES = {signal.SIGTERM: 'SIGTERM', signal.SIGINT: 'Ctrl-C'}
ABORT_STATUS = 130   # the shell's status for a process ended by SIGINT


class StopFlag:
  """Installs the handlers (main thread only) until `restore()`; `raised` is the flag.

  ctrl_c: also handle SIGINT (a terminal's Ctrl-C; `main.py`). Off, Ctrl-C keeps Python's
  KeyboardInterrupt: a notebook's interrupt must not end its kernel.
  """

  def __init__(self, ctrl_c: bool = False):
    self.raised = False
    self._trained = False
    self._interrupts = 0
    self._lock = threading.Lock()
    self._watching = False
    if threading.current_thread() is not threading.main_thread() or jax.process_count() > 1:
      return
    handled = [signal.SIGTERM] + ([signal.SIGINT] if ctrl_c else [])
    self._previous = {s: signal.signal(s, self._handle) for s in handled}
    read_fd, self._write_fd = os.pipe()
    os.set_blocking(self._write_fd, False)
    self._previous_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
    if self._previous_fd != -1:   # someone else's (an asyncio loop): leave it, keep the flag only
      signal.set_wakeup_fd(self._previous_fd)
      os.close(read_fd)
      os.close(self._write_fd)
      del self._write_fd
      return
    self._watching = True
    threading.Thread(target=self._watch, args=(read_fd,), name='mnv3_stop', daemon=True).start()

  def _handle(self, signum, frame):
    del frame
    if not self._watching:      # without the watcher, the Python handler does its work
      self._on_signal(signum)

  def _on_signal(self, signum: int) -> None:
    with self._lock:
      name = _NAMES[signum]
      if signum == signal.SIGINT:
        self._interrupts += 1
        if self._interrupts > 1:
          _exit(f'{name} again: aborting now. The newest complete checkpoint is intact; rerun '
                'the same command to resume from it.', ABORT_STATUS)
      if not self._trained:
        _exit(f'{name} before the first step: nothing to checkpoint; exiting now. Rerun the same '
              'command to resume.', 0 if signum == signal.SIGTERM else ABORT_STATUS)
      if not self.raised:
        more = ' (Ctrl-C again to abort at once)' if signum == signal.SIGINT else ''
        logging.warning('%s: stopping after this step and saving a checkpoint%s.', name, more)
      self.raised = True

  def _watch(self, read_fd: int) -> None:
    with os.fdopen(read_fd, 'rb', buffering=0) as pipe:
      while byte := pipe.read(1):       # b'' once `restore` closes the write end
        if byte[0] in self._previous:
          self._on_signal(byte[0])

  def trained(self) -> None:
    """Marks that a step has run: from now on a stop request waits for the loop's checkpoint."""
    if not self._trained:
      with self._lock:
        self._trained = True

  def restore(self) -> None:
    """Puts back the previous handlers and wakeup fd."""
    if hasattr(self, '_write_fd'):
      signal.set_wakeup_fd(self._previous_fd)
      os.close(self._write_fd)
    for signum, previous in getattr(self, '_previous', {}).items():
      signal.signal(signum, previous)


def _exit(message: str, status: int) -> None:
  logging.warning(message)
  logging.flush()
  os._exit(status)   # pylint: disable=protected-access
