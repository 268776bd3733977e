"""Activations and squeeze-and-excite gates of MobileNetV3, by name (the config's vocabulary)."""
from typing import Callable

import jax
import jax.numpy as jnp
from flax import linen as nn


def hard_sigmoid(x: jax.Array) -> jax.Array:
  """ReLU6(x + 3) / 6, the piecewise-linear sigmoid of the paper (eq. 2)."""
  return jnp.clip(x + 3.0, 0.0, 6.0) * (1.0 / 6.0)


def hard_swish(x: jax.Array) -> jax.Array:
  """x * ReLU6(x + 3) / 6 (the paper's h-swish)."""
  return x * hard_sigmoid(x)


def identity(x: jax.Array) -> jax.Array:
  return x


ACTIVATIONS = {
    'relu': nn.relu,
    'relu6': nn.relu6,
    'hard_swish': hard_swish,
    'swish': nn.swish,
    'gelu': nn.gelu,
    'identity': identity,
}

GATES = {
    'hard_sigmoid': hard_sigmoid,
    'sigmoid': nn.sigmoid,
}


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
  """Looks up an activation by name; raises ValueError naming the allowed ones."""
  if name not in ACTIVATIONS:
    raise ValueError(f'Unknown activation {name!r}; allowed: {sorted(ACTIVATIONS)}.')
  return ACTIVATIONS[name]


def get_gate(name: str) -> Callable[[jax.Array], jax.Array]:
  """Looks up a squeeze-and-excite gate by name; raises ValueError naming the allowed ones."""
  if name not in GATES:
    raise ValueError(f'Unknown SE gate {name!r}; allowed: {sorted(GATES)}.')
  return GATES[name]
