"""Activations and squeeze-and-excite gates of MobileNetV3, by name (the config's vocabulary)."""
from typing import Callable

import jax
from flax import linen as nn

from mnv3_jax.ops.activations import hard_sigmoid, hard_swish, identity


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
