"""Moved to `mnv3_jax.model.summary`; `python -m mnv3_jax.summary` still runs it."""
from mnv3_jax import _moved

_moved.forward(__name__, 'mnv3_jax.summary',
               'mnv3_jax.model.summary', 'mnv3-summary')
