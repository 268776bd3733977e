"""1x1 convolution as a matmul over the channel axis, with a backward pass fast on XLA CPU.

`jnp.dot` of an (N, H, W, Cin) activation gives XLA's autodiff a weight gradient that contracts
three batch axes at once; XLA CPU lowers that to a much slower loop than the plain 2-D GEMM
`x2.T @ dy2` over the flattened (N*H*W, C) views. The custom VJP below writes both gradients
as 2-D GEMMs. Numerically it is the same matmul (tested against autodiff).
"""
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from flax import linen as nn


@jax.custom_vjp
def pointwise(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """(..., Cin) @ (Cin, Cout) -> (..., Cout)."""
  return (x.reshape(-1, x.shape[-1]) @ kernel).reshape(*x.shape[:-1], kernel.shape[1])


def _pointwise_fwd(x, kernel):
  return pointwise(x, kernel), (x, kernel)


def _pointwise_bwd(residuals, dy):
  x, kernel = residuals
  x2, dy2 = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])
  return (dy2 @ kernel.T).reshape(x.shape), (x2.T @ dy2).astype(kernel.dtype)


pointwise.defvjp(_pointwise_fwd, _pointwise_bwd)


class Pointwise(nn.Module):
  """1x1 conv without bias: (..., Cin) -> (..., features). Param 'kernel' (Cin, features), float32,
  the layout of `nn.Dense`, so checkpoints are interchangeable with it."""
  features: int
  kernel_init: Callable = nn.initializers.lecun_normal()
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, scale: Optional[jax.Array] = None,
               gate: Optional[jax.Array] = None) -> jax.Array:
    """scale (features,): multiplies the outputs, folded into the weights (in float32).
    gate (N, Cin): multiplies image n's inputs, x (N, ..., Cin) (squeeze-and-excite)."""
    kernel = self.param('kernel', self.kernel_init, (x.shape[-1], self.features), jnp.float32)
    if scale is not None:
      kernel = kernel * scale
    x = x.astype(self.dtype)
    if gate is None:
      return pointwise(x, kernel.astype(self.dtype))
    return pointwise(x * gate.astype(self.dtype).reshape(gate.shape[0], *[1] * (x.ndim - 2), -1),
                     kernel.astype(self.dtype))
