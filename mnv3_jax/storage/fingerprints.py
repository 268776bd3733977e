"""Per-array fingerprints: orbax checks no checksum of array data, so a garbled byte would restore
as a silently wrong value. Every writer stores these beside the arrays; every reader checks them.
"""
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

_WORDS = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint32}


class DamagedCheckpointError(ValueError):
  """A checkpoint's files are unreadable, incomplete, or differ from the fingerprints saved with them."""


def _host_copy(x) -> np.ndarray:
  """The whole value of `x` on this host: arrays of the train state are replicated."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    if not x.is_fully_replicated:
      raise ValueError(f'Cannot fingerprint an array sharded across processes: {x.sharding}.')
    x = x.addressable_data(0)
  return np.asarray(x)


def _leaf_fingerprint(x) -> int:
  """sum_i bits_i * (2i + 1) mod 2**32 over the raw bits of `x`: changing any one element changes it."""
  x = np.ascontiguousarray(_host_copy(x))
  if x.dtype == np.bool_:
    x = x.astype(np.uint8)
  bits = x.view(_WORDS[x.dtype.itemsize]).ravel().astype(np.uint32)
  odd = np.arange(bits.size, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
  return int(np.sum(bits * odd, dtype=np.uint32))   # uint32 arithmetic wraps: mod 2**32


def fingerprints(tree: Any) -> dict[str, int]:
  """Fingerprints of every array of a pytree, keyed 'path/to/leaf'; independent of sharding.

  Computed on the host with numpy (milliseconds for MobileNetV3): a jitted version costs a
  compilation of its own before the first save, seconds that a SIGTERM deadline cannot spare.
  """
  return {key: _leaf_fingerprint(value)
          for key, value in ocp.tree.to_flat_dict(tree, sep='/').items()}


def verify(saved: Mapping[str, int], tree: Any, where: str) -> None:
  """Raises DamagedCheckpointError naming `where` unless `tree` matches the `saved` fingerprints."""
  if not isinstance(saved, Mapping) or not saved:
    raise DamagedCheckpointError(f'{where}: its fingerprints are missing or unreadable.')
  restored = fingerprints(tree)
  bad = sorted(k for k in saved.keys() | restored.keys() if saved.get(k) != restored.get(k))
  if bad:
    raise DamagedCheckpointError(
        f'{where}: {len(bad)} arrays differ from the fingerprints saved with them, e.g. {bad[:3]}.')
