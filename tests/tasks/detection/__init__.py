"""Tests of mnv3_jax.tasks.detection."""
