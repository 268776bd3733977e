"""Fake quantization with TFLite's int8 arithmetic, and the moving ranges QAT learns.

TFLite's int8 scheme (what `tf.quantization.fake_quant_with_min_max_vars*` simulate and the
converter turns into int8 kernels' parameters):
- activations: asymmetric, per tensor, 256 levels. The range [lo, hi] is first *nudged* so that
  0.0 is exactly representable: scale = (hi - lo) / 255, zero point = round(-lo / scale) clamped to
  [0, 255] (the int8 zero point is that minus 128), then [lo, hi] = (0 - zp, 255 - zp) * scale;
- weights: symmetric, per output channel, narrow range (254 levels, int8 -127..127, zero point 0):
  [lo, hi] = [-max|w_c|, max|w_c|].
Values are clamped to the nudged range and rounded half up onto the grid, as TF's fake-quant
kernels do. Gradients are straight-through: the identity inside the nudged range, zero outside.
"""
from typing import Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

QUANT_STATS = 'quant_stats'    # the variable collection of the moving ranges
_TINY = 1e-8                   # a range narrower than this is widened (all-zero channels)


def nudged_range(lo: jax.Array, hi: jax.Array, num_bits: int = 8, narrow_range: bool = False
                 ) -> Tuple[jax.Array, jax.Array, jax.Array]:
  """(nudged lo, nudged hi, scale) of a float range, TF's `Nudge` (broadcasts per channel).

  lo, hi: float arrays of one shape, lo <= hi. The nudged range contains 0 exactly on its grid.
  """
  quant_min = 1.0 if narrow_range else 0.0
  quant_max = float(2 ** num_bits - 1)
  lo, hi = jnp.asarray(lo, jnp.float32), jnp.asarray(hi, jnp.float32)
  hi = jnp.maximum(hi, lo + _TINY)
  scale = (hi - lo) / (quant_max - quant_min)
  # std::round of a positive value: half away from zero (jnp.round would round half to even).
  zero_point = jnp.clip(jnp.floor(quant_min - lo / scale + 0.5), quant_min, quant_max)
  return (quant_min - zero_point) * scale, (quant_max - zero_point) * scale, scale


def fake_quant(x: jax.Array, lo: jax.Array, hi: jax.Array, num_bits: int = 8,
               narrow_range: bool = False) -> jax.Array:
  """Quantize-dequantize `x` onto the nudged grid of [lo, hi], straight-through gradients.

  x: float array; lo, hi: scalars (per tensor) or arrays broadcasting against x (per channel,
  e.g. shape (C,) against a kernel (..., C)). Returns float32 of x's shape.
  """
  nudged_lo, nudged_hi, scale = nudged_range(lo, hi, num_bits, narrow_range)
  clamped = jnp.clip(x.astype(jnp.float32), nudged_lo, nudged_hi)
  # TF's kernel multiplies by the inverse scale (and, on CPUs with FMA, rounds the multiply-add
  # once): the same form here decides values halfway between two levels as TF does.
  on_grid = jnp.floor((clamped - nudged_lo) * (1.0 / scale) + 0.5) * scale + nudged_lo
  return clamped + jax.lax.stop_gradient(on_grid - clamped)


def fake_quant_weights(kernel: jax.Array, num_bits: int = 8) -> jax.Array:
  """TFLite's int8 weights: symmetric per output channel (the last axis), narrow range."""
  reduce = tuple(range(kernel.ndim - 1))
  bound = jax.lax.stop_gradient(jnp.max(jnp.abs(kernel), axis=reduce))
  return fake_quant(kernel, -bound, bound, num_bits, narrow_range=True)


class MovingRangeQuant(nn.Module):
  """Fake-quantizes an activation with a per-tensor range tracked as moving min/max.

  The range lives in the 'quant_stats' collection ({'min', 'max', 'seen'}); it always contains 0,
  as TFLite's activation ranges do. Training (`update=True`, the collection mutable) moves it
  towards each batch's min/max by `1 - decay` (the first batch sets it), then quantizes with the
  updated range, unless `frozen` (a bool, maybe traced: QAT freezes the ranges after N epochs);
  otherwise (evaluation) it quantizes with the stored one. Under jit with a sharded batch, the
  min/max are those of the global batch.
  """
  decay: float = 0.999
  num_bits: int = 8

  @nn.compact
  def __call__(self, x: jax.Array, update: bool, frozen=False) -> jax.Array:
    lo = self.variable(QUANT_STATS, 'min', lambda: jnp.zeros((), jnp.float32))
    hi = self.variable(QUANT_STATS, 'max', lambda: jnp.zeros((), jnp.float32))
    seen = self.variable(QUANT_STATS, 'seen', lambda: jnp.zeros((), jnp.bool_))
    if update and not self.is_initializing():
      batch = jax.lax.stop_gradient(x.astype(jnp.float32))
      batch_lo, batch_hi = jnp.minimum(jnp.min(batch), 0.0), jnp.maximum(jnp.max(batch), 0.0)
      # A range never seen is set even when frozen: a frozen empty range would zero the tensor.
      keep = jnp.where(seen.value, jnp.where(frozen, 1.0, self.decay), 0.0)
      lo.value = keep * lo.value + (1 - keep) * batch_lo
      hi.value = keep * hi.value + (1 - keep) * batch_hi
      seen.value = jnp.ones((), jnp.bool_)
    return fake_quant(x, lo.value, hi.value, self.num_bits)
