"""The fused inference pass (mnv3_jax/model/fused.py) equals the canonical network, and the
canonical blocks carry nothing that exists only for CPU inference."""
import dataclasses
import inspect

import jax
import jax.numpy as jnp
import pytest

from mnv3_jax.model import MobileNetV3, blocks, fused, init_variables
from mnv3_jax.ops import batchnorm, conv, depthwise, pointwise

# Every variant at widths 0.35/0.75/1.0/1.25, minimalistic, every activation and SE gate, both
# paddings, the other ablation switches; square and odd non-square inputs (odd sizes make TF's
# SAME padding asymmetric at every stride-2 layer).
SQUARE, ODD = (64, 64), (57, 83)
CASES = [
    ('small', 1.0, {}, SQUARE),
    ('small', 0.35, dict(padding='symmetric'), ODD),
    ('small', 0.75, dict(activation='relu', se_gate='sigmoid'), SQUARE),
    ('small', 1.25, dict(activation='swish'), ODD),
    ('small', 1.0, dict(minimalistic=True, padding='symmetric'), ODD),
    ('small', 1.0, dict(last_stage='v2', stem_filters=32, input_norm='imagenet'), SQUARE),
    ('large', 1.0, {}, ODD),
    ('large', 0.35, dict(activation='relu6'), SQUARE),
    ('large', 0.75, dict(activation='gelu', padding='symmetric'), SQUARE),
    ('large', 1.25, dict(activation='identity', se_gate='sigmoid'), ODD),
    ('large', 1.0, dict(minimalistic=True), SQUARE),
    ('large', 1.0, dict(se=False, last_stage='v2'), ODD),
]


def _variables(model, size):
  """Initial variables with every BatchNorm away from the identity, so every fold has something
  to get wrong: scale in [0.5, 1], variance in [1, 2], bias and mean in [-0.1, 0.1]. The BatchNorms
  contract, as trained ones do: with identity activations a network whose BatchNorms expand is
  so ill-conditioned that two orders of the same float32 sums differ by 1e-3 (logits ~4500)."""
  variables = init_variables(model, jax.random.key(0), size)
  keys = iter(jax.random.split(jax.random.key(1), 4096))

  def perturb(path, v):
    name = jax.tree_util.keystr(path)
    uniform = lambda lo, hi: jax.random.uniform(next(keys), v.shape, minval=lo, maxval=hi)
    if name.endswith("['var']"):
      return uniform(1.0, 2.0)
    if name.endswith("['mean']") or ("'bn'" in name and name.endswith("['bias']")):
      return uniform(-0.1, 0.1)
    if "'bn'" in name and name.endswith("['scale']"):
      return uniform(0.5, 1.0)
    return v
  return jax.tree_util.tree_map_with_path(perturb, variables)


@pytest.mark.parametrize('variant,width,options,size', CASES,
                         ids=[f'{c[0]}-{c[1]}-{"-".join(f"{k}={v}" for k, v in c[2].items())}-'
                              f'{c[3][0]}x{c[3][1]}' for c in CASES])
def test_fused_equals_canonical(variant, width, options, size):
  model = MobileNetV3(variant=variant, width=width, num_classes=10, **options)
  variables = _variables(model, size)
  x = jax.random.uniform(jax.random.key(2), (2, *size, 3), minval=-1, maxval=1)
  want = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  for native in (True, False):
    got = jax.jit(lambda v, x, n=native: fused.fused_apply(model, v, x, native=n))(variables, x)
    err = float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want)))
    assert err <= 1e-5, (native, err)


def test_inference_fn_runs_the_native_fused_kernels_on_cpu():
  """Evaluation's forward (`inference_fn`) is the fused one here; the canonical module is not."""
  model = MobileNetV3(variant='small', num_classes=10)
  variables = init_variables(model, jax.random.key(0), SQUARE)
  x = jnp.zeros((1, *SQUARE, 3))
  assert fused.native_available()
  fast = str(jax.make_jaxpr(fused.inference_fn(model))(variables, x))
  plain = str(jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, x))
  assert 'Mnv3DepthwiseFusedForward' in fast and 'Mnv3ConvFusedForward' in fast
  assert 'Mnv3DepthwiseFusedForward' not in plain and 'Mnv3ConvFusedForward' not in plain


# What the blocks took before the fusion became its own pass (`defer`, `pool`, ...).
INFERENCE_ONLY = {'defer', 'pre', 'post', 'pool', 'fold', 'pooled', 'gate_only'}


@pytest.mark.parametrize('module', [blocks.ConvBN, blocks.SqueezeExcite, blocks.InvertedResidual,
                                    depthwise.DepthwiseConv, pointwise.Pointwise, conv.Conv,
                                    batchnorm.BatchNorm])
def test_blocks_take_no_inference_only_argument(module):
  fields = {f.name for f in dataclasses.fields(module)}
  call = set(inspect.signature(module.__call__).parameters)
  assert not fields & INFERENCE_ONLY, fields & INFERENCE_ONLY
  assert call <= {'self', 'x', 'train'}, call   # one input, one return type


@pytest.mark.parametrize('module', [blocks.ConvBN, blocks.SqueezeExcite, blocks.InvertedResidual])
def test_blocks_know_nothing_of_the_fusion(module):
  source = inspect.getsource(module.__call__)
  for word in ('native', 'fused', 'fold', 'if train', 'if not train'):
    assert word not in source, word
