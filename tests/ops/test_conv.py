"""The stem's fused convolution (`mnv3_jax.ops.fused.fused_conv`): the native kernel equals lax.conv followed by
BatchNorm and activation, values and gradients."""
import jax
import jax.numpy as jnp
import pytest
from flax import linen as nn

from mnv3_jax.ops import fused
from mnv3_jax.ops import activations
from tests.support import F32_TOL, U, assert_close, assert_rounded_once, spatial_pads


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize('h,w,stride,padding,features,act', [
    (9, 12, 2, 'same', 16, activations.hard_swish), (8, 11, 2, 'symmetric', 20, nn.relu),
    (7, 7, 1, 'same', 8, activations.identity), (6, 9, 1, 'symmetric', 36, nn.swish)])
def test_fused_dense_conv_matches_lax_conv(dtype, h, w, stride, padding, features, act):
  """fused.fused_conv (the stem: dense 3x3, BatchNorm and activation in the native kernel) equals
  lax.conv then the map in float32, values and gradients; widths that are not a multiple of 8,
  both paddings; swish (not in the kernel) falls back to XLA ops.

  bfloat16: the kernel sums the k*k*Cin = 27 products in float32 and rounds once, so each
  output is within one bf16 rounding (U |want|) of float32's (measured at most 1.0 U); the swish
  fallback rounds after the convolution, the map and inside swish: 2 U of max (measured 0.76 U).
  """
  keys = jax.random.split(jax.random.key(h * w + features), 5)
  x = jax.random.normal(keys[0], (2, h, w, 3)).astype(dtype)
  kernel = jax.random.normal(keys[1], (3, 3, 3, features)).astype(dtype)
  post = (jax.random.normal(keys[2], (features,)), jax.random.normal(keys[3], (features,)), act)
  pads = spatial_pads(h, w, 3, stride, padding)

  @jax.jit
  def run(x, kernel):
    out = []
    for native in (True, False):
      a, b = (x, kernel) if native else (x.astype(jnp.float32), kernel.astype(jnp.float32))
      y, vjp = jax.vjp(lambda u, v, n=native: fused.fused_conv(u, v, stride, pads, n, post),
                       a, b)
      out.append((y, *vjp(jnp.ones_like(y))))
    return out

  got, want = run(x, kernel)
  assert got[0].dtype == dtype
  assert got[0].shape == want[0].shape
  if dtype == jnp.float32:
    for g, r in zip(got, want):
      assert_close(g, r, F32_TOL)
  elif act in fused.NATIVE_ACTIVATIONS:
    assert_rounded_once(got[0], want[0])
  else:
    assert_close(got[0], want[0], 2 * U)
