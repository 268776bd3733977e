"""pointwise.Pointwise: the same values and gradients as nn.Dense without bias."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from mnv3_jax.ops import pointwise


def test_matches_dense_values_and_gradients():
  x = jax.random.normal(jax.random.key(0), (2, 5, 3, 8))
  dy = jax.random.normal(jax.random.key(1), (2, 5, 3, 4))
  ours, ref = pointwise.Pointwise(4), nn.Dense(4, use_bias=False)
  params = ref.init(jax.random.key(2), x)
  assert jax.tree.map(jnp.shape, ours.init(jax.random.key(2), x)) == jax.tree.map(
      jnp.shape, params)
  np.testing.assert_allclose(ours.apply(params, x), ref.apply(params, x), rtol=1e-6)
  grads = [jax.grad(lambda p, x, m=m: jnp.sum(m.apply(p, x) * dy), argnums=(0, 1))(params, x)
           for m in (ours, ref)]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), *grads)


def test_bfloat16_compute_float32_kernel():
  x = jnp.ones((1, 2, 2, 3), jnp.bfloat16)
  module = pointwise.Pointwise(5, dtype=jnp.bfloat16)
  params = module.init(jax.random.key(0), x)
  assert params['params']['kernel'].dtype == jnp.float32
  assert module.apply(params, x).dtype == jnp.bfloat16
