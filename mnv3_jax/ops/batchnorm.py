"""BatchNorm over N, H, W with a hand-written backward pass.

Same variables and update rule as `flax.linen.BatchNorm` (params scale/bias, batch_stats mean/var,
`ra = momentum * ra + (1 - momentum) * batch`, biased batch variance E[x^2] - E[x]^2 in float32),
so checkpoints are interchangeable. Autodiff of the textbook formula keeps several full-size
intermediates and re-reduces them; the closed-form gradient
  dx = scale * rstd * (dy - mean(dy) - xhat * mean(dy * xhat))
needs two per-channel reductions and one elementwise pass, which is what makes the train step
fast on CPU. Statistics are over the array this layer sees: under `jit` with a batch-sharded
input that is the global batch; under `shard_map` it is each device's shard.
"""
import functools
from typing import Tuple

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

_AXES = (0, 1, 2)


def _moments(x):
  xf = x.astype(jnp.float32)
  mean = jnp.mean(xf, axis=_AXES)
  return mean, jnp.maximum(jnp.mean(xf * xf, axis=_AXES) - mean * mean, 0.0)


def _affine(x, a, b):
  """x * a + b per channel, in float32 (in bfloat16 x * a and b nearly cancel), cast back."""
  return (x.astype(jnp.float32) * a + b).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x, scale, bias, epsilon):
  """Normalises NHWC `x` with its own batch moments; returns (y, mean, var), moments float32 (C,)."""
  return _forward(x, scale, bias, epsilon)[0]


def _forward(x, scale, bias, epsilon):
  mean, var = _moments(x)
  rstd = lax.rsqrt(var + epsilon)
  a = rstd * scale
  y = _affine(x, a, bias - mean * a)
  return (y, mean, var), (x, mean, rstd, scale)


def _backward(epsilon, residuals, cotangents):
  del epsilon
  x, mean, rstd, scale = residuals
  dy = cotangents[0].astype(jnp.float32)   # the moments only feed the running averages
  count = x.size // x.shape[-1]
  xhat = (x.astype(jnp.float32) - mean) * rstd
  sum_dy, sum_dy_xhat = jnp.sum(dy, axis=_AXES), jnp.sum(dy * xhat, axis=_AXES)
  dx = (scale * rstd) * (dy - sum_dy / count - xhat * (sum_dy_xhat / count))
  return dx.astype(x.dtype), sum_dy_xhat, sum_dy


batch_norm_train.defvjp(_forward, _backward)


def fold(scale: jax.Array, bias: jax.Array, mean: jax.Array, var: jax.Array,
         epsilon: float) -> Tuple[jax.Array, jax.Array]:
  """Inference BatchNorm as a per-channel map BatchNorm(x) = x * a + b: (a, b), float32 (C,)."""
  a = lax.rsqrt(var + epsilon) * scale
  return a, bias - mean * a


class BatchNorm(nn.Module):
  """BatchNorm of NHWC input over N, H, W: (N, H, W, C) -> (N, H, W, C) in `dtype`."""
  use_running_average: bool = False
  momentum: float = 0.99
  epsilon: float = 1e-3
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (channels,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (channels,), jnp.float32)
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, (channels,), jnp.float32)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, (channels,), jnp.float32)
    x = x.astype(self.dtype)
    if self.use_running_average:
      return _affine(x, *fold(scale, bias, ra_mean.value, ra_var.value, self.epsilon))
    y, mean, var = batch_norm_train(x, scale, bias, self.epsilon)
    if not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1.0 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1.0 - self.momentum) * var
    return y
