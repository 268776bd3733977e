"""Weights out: SavedModel and TFLite (float32, int8) export (`tflite`), and the TFLite benchmark
(`benchmark`). `python -m mnv3_jax.export` runs the exporter.

Importing this package imports TensorFlow without its C++ start-up lines (oneDNN, CPU features)
and, unless $TF_CPP_MIN_LOG_LEVEL says otherwise, without the INFO lines of its C++ code (the
TFLite converter prints a dozen per model): both would bury what these command lines print.
`--library_logs` on the command line keeps them, as main.py does.
"""
import os
import sys

from mnv3_jax import console

if not any(a.startswith(('--library_logs', '-library_logs')) for a in sys.argv[1:]):
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')   # read once, when TensorFlow loads
  console.import_tensorflow_quietly()
