"""Runs the whole suite on 8 CPU devices, with a compilation cache shared by its tests.

XLA reads the device-count flag once, when jax initialises, so it is set before any import of jax.
The persistent cache lets tests that compile the same train step (e.g. a run and its resumption)
reuse one compilation; it lives in a temp folder of this pytest session only.
"""
import os
import tempfile

_DEVICES = '--xla_force_host_platform_device_count=8'
if 'xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} {_DEVICES}".strip()

import jax  # pylint: disable=g-import-not-at-top

_CACHE = tempfile.TemporaryDirectory(prefix='mnv3_jax_xla_cache_')
jax.config.update('jax_compilation_cache_dir', _CACHE.name)
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
