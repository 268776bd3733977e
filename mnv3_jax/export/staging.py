"""An export's output folder appears complete or not at all.

Every file is written into `<out>.tmp-<pid>` (beside `<out>`, so that the last step, a rename, is
atomic) and that folder becomes `<out>` only when the block that fills it ends without an error.
On any error (or Ctrl-C) the temporary folder, and any parent folders made for it, are removed and
`<out>` is as it was. `<out>` must be new or an empty directory (which the rename replaces); a
file, a non-empty directory or a parent that is a file is refused by `check_out` before any
compute. A process killed outright (SIGKILL, power loss) can leave `<out>.tmp-<pid>` behind,
never a half-written `<out>`: delete it.
"""
import contextlib
import os
import shutil
from typing import Iterator, List


def check_out(out) -> str:
  """The absolute path of the output folder `out`; ValueError unless it can become the export.

  Allowed: a path that does not exist (missing parent folders are made) or an empty directory.
  """
  if not out:
    raise ValueError(f'out={out!r}: pass a new or empty directory for the export (--out).')
  path = os.path.realpath(out)
  if os.path.isdir(path):
    if os.listdir(path):
      raise ValueError(f'{out} exists and is not empty; choose a new directory.')
  elif os.path.lexists(path):
    raise ValueError(f'--out={out} is a file, not a directory; pass a new or empty directory.')
  else:
    parent = os.path.dirname(path)
    while not os.path.lexists(parent):
      parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
      raise ValueError(f'--out={out}: {parent} is a file, not a directory; pass a new or empty '
                       'directory.')
  return path


def _missing_folders(path: str) -> List[str]:
  """The folders of `path` (itself included) that do not exist, deepest first."""
  missing = []
  while not os.path.lexists(path):
    missing.append(path)
    path = os.path.dirname(path)
  return missing


@contextlib.contextmanager
def staged(out) -> Iterator[str]:
  """Yields a new empty folder `<out>.tmp-<pid>`, renamed to `out` when the block completes.

  If the block (or the rename) raises, removes that folder and the parent folders made for it,
  then re-raises.
  """
  path = check_out(out)
  parent = os.path.dirname(path)
  made = _missing_folders(parent)
  tmp = f'{path}.tmp-{os.getpid()}'
  if os.path.lexists(tmp):
    raise ValueError(f'{tmp} exists (left by an export of an earlier process with this id that '
                     'was killed): delete it.')
  os.makedirs(tmp)
  try:
    yield tmp
    try:
      os.rename(tmp, path)
    except OSError as e:
      raise ValueError(f'{out} was written by someone else during the export ({e.strerror}); '
                       'the export is not kept.') from e
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    for folder in made:
      try:
        os.rmdir(folder)
      except OSError:   # not empty: something else is being written there too
        break
    raise
