"""`python -m mnv3_jax.export`: the exporter's command line (`mnv3_jax.export.tflite`)."""
from mnv3_jax.export import tflite

__doc__ = tflite.__doc__   # what absl prints for --help

tflite.cli()
