"""batchnorm.BatchNorm against flax.linen.BatchNorm: outputs, running statistics, gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from mnv3_jax.ops import batchnorm


def _pair(train, dtype=jnp.float32):
  kw = dict(use_running_average=not train, momentum=0.9, epsilon=1e-3, dtype=dtype)
  return batchnorm.BatchNorm(**kw), nn.BatchNorm(**kw)


def _variables(rng, channels):
  k1, k2, k3, k4 = jax.random.split(rng, 4)
  return {'params': {'scale': 1 + 0.3 * jax.random.normal(k1, (channels,)),
                     'bias': jax.random.normal(k2, (channels,))},
          'batch_stats': {'mean': jax.random.normal(k3, (channels,)),
                          'var': jax.random.uniform(k4, (channels,), minval=0.5, maxval=2)}}


@pytest.mark.parametrize('train', [True, False])
def test_matches_flax_outputs_and_running_stats(train):
  x = 3 + 2 * jax.random.normal(jax.random.key(0), (4, 5, 6, 7))
  variables = _variables(jax.random.key(1), 7)
  ours, ref = _pair(train)
  y, new = ours.apply(variables, x, mutable=['batch_stats'])
  y_ref, new_ref = ref.apply(variables, x, mutable=['batch_stats'])
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), new, new_ref)
  if train:   # the running averages moved towards the batch moments
    assert not np.allclose(new['batch_stats']['mean'], variables['batch_stats']['mean'])


def test_gradients_match_autodiff_of_flax():
  x = 1 + jax.random.normal(jax.random.key(2), (3, 4, 5, 6))
  dy = jax.random.normal(jax.random.key(3), x.shape)
  variables = _variables(jax.random.key(4), 6)
  grads = []
  for module in _pair(train=True):
    def f(params, x, module=module):
      y, _ = module.apply({'params': params, 'batch_stats': variables['batch_stats']}, x,
                          mutable=['batch_stats'])
      return jnp.sum(y * dy)
    grads.append(jax.grad(f, argnums=(0, 1))(variables['params'], x))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), *grads)


def test_init_creates_flax_variables_without_updating_stats():
  variables = batchnorm.BatchNorm().init(jax.random.key(0), jnp.ones((2, 3, 3, 5)))
  ref = nn.BatchNorm(use_running_average=False).init(jax.random.key(0), jnp.ones((2, 3, 3, 5)))
  assert jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape, ref)
  np.testing.assert_array_equal(variables['batch_stats']['var'], np.ones(5))


def test_bfloat16_compute_keeps_float32_statistics():
  x = jax.random.normal(jax.random.key(5), (2, 4, 4, 8)).astype(jnp.bfloat16)
  variables = _variables(jax.random.key(6), 8)
  y, new = _pair(train=True, dtype=jnp.bfloat16)[0].apply(variables, x, mutable=['batch_stats'])
  assert y.dtype == jnp.bfloat16 and new['batch_stats']['mean'].dtype == jnp.float32
