"""Elementwise activations of MobileNetV3 that have no jax.nn name: h-sigmoid, h-swish, identity.

The native kernels apply some of them themselves (`fused.NATIVE_ACTIVATIONS`); the
vocabulary of names that configs use is `mnv3_jax.model.activations`.
"""
import jax
import jax.numpy as jnp


def hard_sigmoid(x: jax.Array) -> jax.Array:
  """ReLU6(x + 3) / 6, the piecewise-linear sigmoid of the paper (eq. 2)."""
  return jnp.clip(x + 3.0, 0.0, 6.0) * (1.0 / 6.0)


def hard_swish(x: jax.Array) -> jax.Array:
  """x * ReLU6(x + 3) / 6 (the paper's h-swish)."""
  return x * hard_sigmoid(x)


def identity(x: jax.Array) -> jax.Array:
  return x
