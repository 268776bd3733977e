"""Dense kxk convolution without bias (the stem): `lax.conv_general_dilated`, the op `nn.Conv`
emits, with `nn.Conv`'s params. Its inference form with BatchNorm and activation inside a native
CPU kernel is `ops.fused.fused_conv`.
"""
from typing import Callable, Tuple

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax


Padding = Tuple[Tuple[int, int], Tuple[int, int]]


def conv(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding) -> jax.Array:
  """NHWC (N, H, W, Ci) * HWIO (k, k, Ci, Co) -> (N, Ho, Wo, Co), no bias."""
  return lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


class Conv(nn.Module):
  """kxk conv without bias, the params of `nn.Conv` ('kernel' (k, k, Ci, features)).

  (N, H, W, Ci) -> (N, Ho, Wo, features); `padding` ((top, bottom), (left, right)).
  """
  features: int
  kernel_size: int
  stride: int
  padding: Padding
  kernel_init: Callable = nn.initializers.lecun_normal()
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    kernel = self.param('kernel', self.kernel_init, (k, k, x.shape[-1], self.features),
                        jnp.float32)
    return conv(x.astype(self.dtype), kernel.astype(self.dtype), self.stride, self.padding)
