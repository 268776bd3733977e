"""Process setup that makes mnv3_jax fast on CPU: tcmalloc (the native kernels: `ops.native`).

- `use_tcmalloc()`: re-executes the process with `LD_PRELOAD=libtcmalloc_minimal.so.4` when the
  library is installed (Debian/Ubuntu package `libtcmalloc-minimal4`). XLA CPU allocates and frees
  large buffers on every step; glibc's malloc returns them to the kernel and page-faults them back,
  which more than halves training throughput. Entry points call it first, before importing jax.
"""
import os
import sys
from typing import Optional, Sequence

TCMALLOC_NAMES = ('libtcmalloc_minimal.so.4', 'libtcmalloc.so.4')
TCMALLOC_DIRS = ('/usr/lib/x86_64-linux-gnu', '/usr/lib/aarch64-linux-gnu', '/usr/lib64', '/usr/lib',
                 '/usr/local/lib')
_REEXEC_MARK = 'MNV3_TCMALLOC_REEXEC'   # set in the re-executed process: never loop


def find_tcmalloc() -> Optional[str]:
  """Path of an installed tcmalloc shared library, or None."""
  for d in TCMALLOC_DIRS:
    for name in TCMALLOC_NAMES:
      path = os.path.join(d, name)
      if os.path.exists(path):
        return path
  return None


def tcmalloc_loaded() -> bool:
  """True when tcmalloc is mapped into this process."""
  try:
    with open('/proc/self/maps') as f:
      return 'tcmalloc' in f.read()
  except OSError:
    return False


def use_tcmalloc(argv: Optional[Sequence[str]] = None) -> bool:
  """Re-executes this Python process with tcmalloc preloaded, if installed and not yet loaded.

  Returns True when tcmalloc is loaded (so the caller runs on), False when it is not available;
  when it re-executes it does not return. Set MNV3_TCMALLOC=0 to opt out. `argv` (without the
  interpreter) defaults to this process's own command line, `-c`/`-m` forms included.
  """
  if tcmalloc_loaded():
    return True
  path = find_tcmalloc()
  if path is None or os.environ.get('MNV3_TCMALLOC') == '0' or os.environ.get(_REEXEC_MARK):
    return False
  env = dict(os.environ)
  env['LD_PRELOAD'] = ':'.join(p for p in (path, env.get('LD_PRELOAD')) if p)
  env[_REEXEC_MARK] = '1'
  args = list(sys.orig_argv[1:] if argv is None else argv)
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *args], env)
  return True   # not reached
