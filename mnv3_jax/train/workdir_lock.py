"""One training run per workdir: a lock file that a second run finds and stops at, unchanged.

`acquire(workdir)` returns a `Lock` (a context manager) or raises `WorkdirBusyError` naming the
run that holds it (host, pid, start time, command line) and the lock file, `<workdir>/.lock`.
Failing leaves the workdir as it was. The file holds the holder's description as JSON and is
removed on release; a file left by a run that is gone is taken over with a warning naming it.

Two implementations, chosen by the path (`use_flock=None`) or forced:
- Local paths (and NFS, which Linux maps to POSIX locks): `fcntl.flock` on the file. The kernel
  drops the lock when the process ends, however it ends (SIGKILL, OOM kill, a crash), so a left-
  over file is stale exactly when the lock is free. Limits: the lock is per open file, not per
  process, so it is NOT reentrant (a second `acquire` in the same process raises, saying so), and
  a child forked without exec keeps it alive while it lives. A filesystem refusing flock (some FUSE
  mounts) falls back to the heartbeat lock below, with a warning.
- Remote paths (`gs://...` and other etils-epath schemes), where no lock primitive exists: best
  effort. The holder writes its description with a heartbeat time, refreshed every `heartbeat_s`
  by a daemon thread. A file counts as stale when its heartbeat is older than `stale_after_s`, or
  at once when it names this host and a pid that no longer exists. Limits: acquisition is
  read-then-write (after writing, the acquirer waits `settle_s` and reads back; of runs starting in
  the same moment only the last writer continues, unless the store is slower than `settle_s`);
  staleness compares the holder's clock with the reader's (skew counts against `stale_after_s`);
  a holder stalled longer than `stale_after_s` can lose the lock (its heartbeat thread then logs an
  error); a killed run blocks the workdir until its heartbeat is stale, or the file is deleted.

Multi-host: one lock per run, taken by process 0. Every process may call `acquire` with its
`process_index`; the others get a `Lock` that holds nothing. Sharing the outcome with the other
processes (so that all stop when process 0 fails) is the caller's job.
"""
import datetime
import errno
import fcntl
import json
import math
import os
import shlex
import socket
import sys
import threading
import time
import uuid
from typing import Optional

from absl import logging
from etils import epath

LOCK_NAME = '.lock'
_READ_TRIES = 20          # a holder writes its description just after locking: wait up to ~1 s
_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)


class WorkdirBusyError(ValueError):
  """Another run holds the workdir's lock (a ValueError: the CLIs report it in one line).

  `holder` is its description (a dict, maybe empty)."""

  def __init__(self, message: str, holder: dict, lock_path: str):
    super().__init__(message)
    self.holder = holder
    self.lock_path = lock_path


class Lock:
  """A held workdir lock: `release()` (idempotent) or use it as a context manager."""

  path: Optional[str] = None   # the lock file; None when this process holds nothing
  held = False

  def release(self) -> None:
    """Gives the lock up and removes the lock file; a second call does nothing."""

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.release()
    return False


def acquire(workdir: str, *, process_index: int = 0, use_flock: Optional[bool] = None,
            heartbeat_s: float = 30.0, stale_after_s: float = 300.0,
            settle_s: float = 1.0) -> Lock:
  """Locks `workdir` (created if missing) for this run, or raises `WorkdirBusyError`.

  Args:
    workdir: the run's directory, local or an etils-epath URI such as gs://bucket/run.
    process_index: this process's index in a multi-host run; only process 0 locks.
    use_flock: True for the kernel lock, False for the heartbeat lock; None picks flock for
      local paths (no URI scheme).
    heartbeat_s, stale_after_s, settle_s: the heartbeat lock's timing (see the module doc).
  """
  if isinstance(process_index, bool) or not isinstance(process_index, int) or process_index < 0:
    raise ValueError(f'Invalid process_index {process_index!r}; allowed: an integer >= 0.')
  if not 0 < heartbeat_s < stale_after_s:
    raise ValueError(f'Invalid heartbeat_s {heartbeat_s!r}; allowed: 0 < heartbeat_s < '
                     f'stale_after_s ({stale_after_s!r}).')
  if not 0 <= settle_s < stale_after_s:
    raise ValueError(f'Invalid settle_s {settle_s!r}; allowed: 0 <= settle_s < stale_after_s '
                     f'({stale_after_s!r}).')
  if process_index != 0:
    return Lock()
  workdir = os.fspath(workdir)
  if use_flock is None:
    use_flock = '://' not in workdir
  if use_flock:
    lock = _FlockLock.acquire(workdir)
    if lock is not None:
      return lock
    logging.warning('The filesystem of %s refuses flock: using a heartbeat lock file instead.',
                    workdir)
  return _HeartbeatLock(workdir, heartbeat_s, stale_after_s, settle_s)


def _description(**extra) -> dict:
  return dict(host=socket.gethostname(), pid=os.getpid(),
              started=datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
              argv=list(getattr(sys, 'orig_argv', sys.argv)), **extra)


def _describe(holder: dict) -> str:
  if not holder:
    return 'a run that has not described itself (its lock file is empty or unreadable)'
  command = shlex.join(str(a) for a in holder.get('argv', [])).replace('\n', '\\n')
  if len(command) > 300:    # one line; the tail keeps the arguments (e.g. after a `-c` script)
    command = f'{command[:150]} ... {command[-145:]}'
  return (f"pid {holder.get('pid')} on host {holder.get('host')}, started "
          f"{holder.get('started')}, command: {command}")


def _parse(text: str) -> Optional[dict]:
  """The holder description in `text`; {} for an empty file; None while unparsable."""
  if not text.strip():
    return {}
  try:
    holder = json.loads(text)
  except ValueError:
    return None
  return holder if isinstance(holder, dict) else None


def _busy(workdir: str, path: str, holder: dict, remedy: str = '') -> WorkdirBusyError:
  if holder.get('host') == socket.gethostname() and holder.get('pid') == os.getpid():
    return WorkdirBusyError(
        f'workdir {workdir} is already locked by this process (pid {os.getpid()}; lock file '
        f'{path}): the workdir lock is not reentrant; release the first lock before acquiring '
        'it again.', holder, path)
  pid, host = holder.get('pid', 'PID'), holder.get('host', 'its host')
  return WorkdirBusyError(
      f'workdir {workdir} is in use by another training run: {_describe(holder)} (lock file '
      f'{path}). Two runs in one workdir destroy each other\'s checkpoints: wait for that run to '
      f'end, stop it (`kill {pid}` on {host}), or pass another --workdir.{remedy}', holder, path)


class _FlockLock(Lock):
  """The kernel's lock on a local file (see the module doc)."""

  def __init__(self, fd: int, path: str):
    self._fd, self.path, self.held = fd, path, True

  @classmethod
  def acquire(cls, workdir: str) -> Optional['_FlockLock']:
    """The lock, or None if this filesystem refuses flock; raises WorkdirBusyError."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK_NAME)
    while True:
      existed = os.path.exists(path)
      fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        holder = cls._read(fd)
        os.close(fd)
        raise _busy(workdir, path, holder or {}) from None
      except OSError as e:
        os.close(fd)
        if e.errno not in _UNSUPPORTED:
          raise
        if not existed:
          os.unlink(path)
        return None
      try:
        same_file = os.fstat(fd).st_ino == os.stat(path).st_ino
      except FileNotFoundError:
        same_file = False
      if same_file:
        break
      os.close(fd)   # its holder removed the file while we locked it: lock the new one
    previous = cls._read(fd, tries=1)
    if previous or previous is None:
      logging.warning('Taking over the workdir lock %s of a run that ended without releasing it '
                      '(killed?): %s.', path, _describe(previous or {}))
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(_description()).encode(), 0)
    os.fsync(fd)
    return cls(fd, path)

  @staticmethod
  def _read(fd: int, tries: int = _READ_TRIES) -> Optional[dict]:
    """The description in `fd`'s file, waiting while its holder is still writing it."""
    for attempt in range(tries):
      holder = _parse(os.pread(fd, 1 << 16, 0).decode(errors='replace'))
      if holder:
        return holder
      if attempt + 1 < tries:
        time.sleep(0.05)
    return holder

  def release(self) -> None:
    if not self.held:
      return
    self.held = False
    try:     # unlink before unlocking, so a run waiting for the lock finds the file gone
      if os.stat(self.path).st_ino == os.fstat(self._fd).st_ino:
        os.unlink(self.path)
    except FileNotFoundError:
      pass   # someone deleted it; any file there now is not ours
    finally:
      os.close(self._fd)


class _HeartbeatLock(Lock):
  """A lock file whose holder refreshes a heartbeat time (see the module doc)."""

  def __init__(self, workdir: str, heartbeat_s: float, stale_after_s: float, settle_s: float):
    self._path = epath.Path(workdir) / LOCK_NAME
    self.path = os.fspath(self._path)
    remedy = (f' If that run is gone, its lock counts as stale {stale_after_s:.0f} s after its '
              f'last heartbeat; or delete {self.path}.')
    holder = self._read()
    if holder:
      reason = self._stale(holder, stale_after_s)
      if reason is None:
        raise _busy(workdir, self.path, holder, remedy)
      logging.warning('Taking over the workdir lock %s (%s): %s.', self.path, reason,
                      _describe(holder))
    self._path.parent.mkdir(parents=True, exist_ok=True)
    self._holder = _description(token=uuid.uuid4().hex)
    self._write()
    time.sleep(settle_s)
    winner = self._read()
    if not winner or winner.get('token') != self._holder['token']:
      raise _busy(workdir, self.path, winner or {}, remedy)
    self.held = True
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._beat, args=(heartbeat_s,), daemon=True,
                                    name='workdir-lock-heartbeat')
    self._thread.start()

  def _read(self) -> dict:
    """The lock file's description; {} if absent, or still empty or unparsable after ~1 s (a
    local file can be caught mid-write)."""
    for _ in range(_READ_TRIES):
      try:
        text = self._path.read_text()
      except FileNotFoundError:
        return {}
      holder = _parse(text)
      if holder:
        return holder
      time.sleep(0.05)
    if text.strip():
      logging.warning('The workdir lock %s is not a JSON description: ignored.', self.path)
    return {}

  @staticmethod
  def _stale(holder: dict, stale_after_s: float) -> Optional[str]:
    """Why `holder` no longer holds the lock, or None if it may."""
    if holder.get('host') == socket.gethostname() and isinstance(holder.get('pid'), int):
      try:
        os.kill(holder['pid'], 0)
      except ProcessLookupError:
        return f"its process {holder['pid']} is gone"
      except PermissionError:
        pass      # alive, another user's
    beat = holder.get('heartbeat')
    age = time.time() - beat if isinstance(beat, (int, float)) else math.inf
    if age > stale_after_s:
      return f'no heartbeat for {age:.0f} s, stale after {stale_after_s:.0f} s'
    return None

  def _write(self) -> None:
    self._holder['heartbeat'] = time.time()
    self._path.write_text(json.dumps(self._holder))

  def _beat(self, heartbeat_s: float) -> None:
    while not self._stop.wait(heartbeat_s):
      try:
        current = self._read()
        if current.get('token') != self._holder['token']:
          logging.error('Lost the workdir lock %s to %s (this run stalled past the stale '
                        'limit?): two runs may now share the workdir.', self.path,
                        _describe(current))
          return
        self._write()
      except Exception as e:  # pylint: disable=broad-except
        logging.warning('Workdir lock heartbeat failed (%s); the next beat retries.', e)

  def release(self) -> None:
    if not self.held:
      return
    self.held = False
    self._stop.set()
    self._thread.join()
    try:    # an error here must not hide the one that ends the run
      if self._read().get('token') == self._holder['token']:
        self._path.unlink(missing_ok=True)
    except Exception as e:  # pylint: disable=broad-except
      logging.warning('Could not remove the workdir lock %s (%s): it goes stale when its '
                      'heartbeat is old.', self.path, e)
