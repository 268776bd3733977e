"""Moved to `mnv3_jax.export.benchmark`; `python -m mnv3_jax.benchmark_tflite` still runs it."""
from mnv3_jax import _moved

_moved.forward(__name__, 'mnv3_jax.benchmark_tflite',
               'mnv3_jax.export.benchmark', 'mnv3-benchmark-tflite')
