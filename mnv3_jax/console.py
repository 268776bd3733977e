"""What a run prints: this project's log lines, without the INFO chatter of the libraries under it.

orbax (tens of lines per checkpoint), TFDS (dataset info, progress bars) and absl internals log at
INFO through the same absl handler as the trainer. By default `quiet_libraries()` drops INFO and
DEBUG records that come from outside this package and `main.py`, and shortens the absl prefix to
the time of day; warnings and errors always pass. `main.py --library_logs` keeps everything, in
absl's full format.
"""
import logging
import os
import time

from absl import logging as absl_logging

_PACKAGE = os.path.dirname(os.path.abspath(__file__))
_KEPT = (
    _PACKAGE + os.sep,                                   # mnv3_jax/
    os.path.join(os.path.dirname(_PACKAGE), 'main.py'),  # the entry point
)


class LibraryInfoFilter(logging.Filter):
  """Passes WARNING and above from anywhere, INFO and below only from the paths in `_KEPT`."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.WARNING:
      return True
    path = os.path.abspath(record.pathname)
    return any(path.startswith(k) if os.path.isabs(k) else k in path for k in _KEPT)


class ShortFormatter(logging.Formatter):
  """'09:24:28 message' and '09:24:28 WARNING message' (absl's prefix also names the thread id and
  the source line, which a reader of the progress lines does not need)."""

  def format(self, record: logging.LogRecord) -> str:
    level = '' if record.levelno < logging.WARNING else f'{record.levelname} '
    line = f'{time.strftime("%H:%M:%S", time.localtime(record.created))} {level}{record.getMessage()}'
    if record.exc_info:
      line += '\n' + self.formatException(record.exc_info)
    return line


def quiet_libraries() -> None:
  """Hides the libraries' INFO logging and TFDS's progress bars for this process; short prefixes."""
  handler = absl_logging.get_absl_handler()
  if not any(isinstance(f, LibraryInfoFilter) for f in handler.filters):
    handler.addFilter(LibraryInfoFilter())
  handler.setFormatter(ShortFormatter())
  import tensorflow_datasets as tfds   # pylint: disable=import-outside-toplevel
  tfds.disable_progress_bar()


_NATIVE_NOISE = ('WARNING: All log messages before absl::InitializeLog() is called',
                 'port.cc:', 'cpu_feature_guard.cc:', 'To enable the following instructions:')


def import_tensorflow_quietly() -> None:
  """Imports TensorFlow with its C++ start-up INFO lines (oneDNN, CPU features) dropped.

  TensorFlow prints them to file descriptor 2 before its logging is configured, so neither
  TF_CPP_MIN_LOG_LEVEL nor a Python filter reaches them; anything else it prints is passed on.
  Later C++ INFO lines are hidden by TF_CPP_MIN_LOG_LEVEL=1 (unless the environment sets it).
  """
  import sys   # pylint: disable=import-outside-toplevel
  import tempfile   # pylint: disable=import-outside-toplevel
  if 'tensorflow' in sys.modules:
    return
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')   # its INFO lines while running, e.g. tf.data's
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      import tensorflow  # pylint: disable=import-outside-toplevel,unused-import
    finally:
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      for line in captured.read().decode(errors='replace').splitlines(keepends=True):
        if not any(noise in line for noise in _NATIVE_NOISE):
          sys.stderr.write(line)
      sys.stderr.flush()
