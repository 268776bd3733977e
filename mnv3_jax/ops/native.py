"""The native CPU kernels (`csrc/`): built on first use, registered as XLA FFI custom calls.

`native_depthwise()` compiles `csrc/depthwise_cpu.cc` and `csrc/conv_cpu.cc` (the stem) against
the installed jaxlib's XLA FFI headers with the system C++ compiler (once per source, jaxlib
version and CPU; cached under `$MNV3_CACHE_DIR` or `~/.cache/mnv3_jax`) and registers their
custom calls. It returns False (and `ops.depthwise` and `ops.fused` fall back to pure XLA) when
there is no compiler or the build fails.
"""
import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

CSRC = Path(__file__).parent / 'csrc'
SOURCES = (CSRC / 'depthwise_cpu.cc', CSRC / 'conv_cpu.cc')
HEADERS = (CSRC / 'cpu_common.h',)
TARGETS = ('Mnv3DepthwiseForward', 'Mnv3DepthwiseFusedForward', 'Mnv3DepthwiseInputGrad',
           'Mnv3DepthwiseWeightGrad', 'Mnv3ConvFusedForward')

_log = logging.getLogger(__name__)


def _cache_dir() -> Path:
  return Path(os.environ.get('MNV3_CACHE_DIR', Path.home() / '.cache' / 'mnv3_jax'))


def _build(include_dir: str) -> Optional[Path]:
  """Compiles the kernels (or finds them cached); returns the library path or None."""
  compiler = os.environ.get('CXX') or shutil.which('c++') or shutil.which('g++')
  if compiler is None:
    _log.warning('No C++ compiler found: depthwise convolutions use the pure-XLA path.')
    return None
  import jaxlib   # pylint: disable=import-outside-toplevel
  flags = ['-O3', '-march=native', '-std=c++17', '-shared', '-fPIC']
  key = hashlib.sha256(b'\0'.join([
      *(f.read_bytes() for f in SOURCES + HEADERS), jaxlib.__version__.encode(), platform.machine().encode(),
      platform.node().encode(), ' '.join([compiler, *flags]).encode()])).hexdigest()[:16]
  target = _cache_dir() / f'depthwise_cpu-{key}.so'
  if target.exists():
    return target
  target.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
    out = Path(tmp) / target.name
    cmd = [compiler, *flags, f'-I{include_dir}', *map(str, SOURCES), '-o', str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
      _log.warning('Building the native depthwise kernels failed (%s); using pure XLA.\n%s',
                   ' '.join(cmd), result.stderr[-2000:])
      return None
    os.replace(out, target)   # atomic: concurrent builders agree on the result
  return target


@functools.lru_cache(maxsize=None)
def native_depthwise() -> bool:
  """Builds (once) and registers the native CPU depthwise kernels; True when they are usable.

  MNV3_NATIVE_DEPTHWISE=0 disables them.
  """
  if os.environ.get('MNV3_NATIVE_DEPTHWISE') == '0':
    return False
  import jax   # pylint: disable=import-outside-toplevel
  path = _build(jax.ffi.include_dir())
  if path is None:
    return False
  lib = ctypes.cdll.LoadLibrary(str(path))
  for name in TARGETS:
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, name)), platform='cpu')
    jax.ffi.register_ffi_target_as_batch_partitionable(name)
  return True
