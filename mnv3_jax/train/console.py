"""What a run prints: this project's log lines, without the INFO chatter of the libraries under it.

orbax (tens of lines per checkpoint, one of them the whole custom metadata), TFDS (dataset info,
progress bars) and absl internals log at INFO through the same absl handler as the trainer. By
default `quiet_libraries()` drops INFO and DEBUG records that come from outside this package,
`main.py` and the clu writers that print metrics and progress; warnings and errors always pass.
`main.py --library_logs` keeps everything.
"""
import logging
import os

from absl import logging as absl_logging

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_KEPT = (
    _PACKAGE + os.sep,                                   # mnv3_jax/
    os.path.join(os.path.dirname(_PACKAGE), 'main.py'),  # the entry point
    os.path.join('clu', 'metric_writers', 'logging_writer.py'),   # the metric lines
    os.path.join('clu', 'periodic_actions.py'),                   # steps/s and ETA
)


class LibraryInfoFilter(logging.Filter):
  """Passes WARNING and above from anywhere, INFO and below only from the paths in `_KEPT`."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.WARNING:
      return True
    path = os.path.abspath(record.pathname)
    return any(path.startswith(k) if os.path.isabs(k) else k in path for k in _KEPT)


def quiet_libraries() -> None:
  """Hides the libraries' INFO logging and TFDS's progress bars for this process."""
  handler = absl_logging.get_absl_handler()
  if not any(isinstance(f, LibraryInfoFilter) for f in handler.filters):
    handler.addFilter(LibraryInfoFilter())
  import tensorflow_datasets as tfds   # pylint: disable=import-outside-toplevel
  tfds.disable_progress_bar()


_NATIVE_NOISE = ('WARNING: All log messages before absl::InitializeLog() is called',
                 'port.cc:', 'cpu_feature_guard.cc:', 'To enable the following instructions:')


def import_tensorflow_quietly() -> None:
  """Imports TensorFlow with its C++ start-up INFO lines (oneDNN, CPU features) dropped.

  TensorFlow prints them to file descriptor 2 before its logging is configured, so neither
  TF_CPP_MIN_LOG_LEVEL nor a Python filter reaches them; anything else it prints is passed on.
  """
  import sys   # pylint: disable=import-outside-toplevel
  import tempfile   # pylint: disable=import-outside-toplevel
  if 'tensorflow' in sys.modules:
    return
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
