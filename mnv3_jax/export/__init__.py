"""Weights out: SavedModel and TFLite (float32, int8) export (`tflite`), and the TFLite benchmark
(`benchmark`). `python -m mnv3_jax.export` runs the exporter."""
