"""Moved to `mnv3_jax.interop.import_weights`; `python -m mnv3_jax.import_weights` still runs it."""
from mnv3_jax import _moved

_moved.forward(__name__, 'mnv3_jax.import_weights',
               'mnv3_jax.interop.import_weights', 'mnv3-import-weights')
