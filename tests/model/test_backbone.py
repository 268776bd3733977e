"""MobileNetV3Backbone: the classifier's variables and features, taps, output stride 16, the
reduced tail, the dilated depthwise conv, bad options."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from mnv3_jax import model as model_lib
from mnv3_jax.model import blocks
from mnv3_jax.model.backbone import MobileNetV3Backbone
from mnv3_jax.ops import depthwise

OPTIONS = dict(variant='small', width=0.5, depthwise_impl='conv')
SIZE = (64, 96)


def shapes(module, taps, size=SIZE):
  """{tap: shape} of `module`'s features on (1, *size, 3) images, traced without compiling."""
  out = jax.eval_shape(
      lambda x: module.init_with_output(jax.random.key(0), x, taps=taps)[0],
      jax.ShapeDtypeStruct((1, *size, 3), jnp.float32))
  return {name: tuple(v.shape[1:]) for name, v in out.items()}


def test_classifier_variables_load_and_features_equal_its_intermediates():
  classifier = model_lib.MobileNetV3(**OPTIONS, num_classes=10)
  variables = model_lib.init_variables(classifier, jax.random.key(1), SIZE)
  # Randomized BN statistics: features that ignore them would differ.
  rng = np.random.default_rng(2)
  stats = traverse_util.flatten_dict(variables['batch_stats'])
  variables['batch_stats'] = traverse_util.unflatten_dict({
      path: rng.normal(0, 0.1, v.shape) if path[-1] == 'mean' else rng.uniform(0.5, 1.5, v.shape)
      for path, v in stats.items()})
  x = jax.random.uniform(jax.random.key(3), (2, *SIZE, 3), minval=-1, maxval=1)
  _, state = classifier.apply(variables, x, capture_intermediates=True, mutable=['intermediates'])
  inter = state['intermediates']

  backbone = MobileNetV3Backbone(**OPTIONS)
  trimmed = {'params': {k: v for k, v in variables['params'].items()
                        if k not in ('pre_logits', 'logits')},
             'batch_stats': variables['batch_stats']}
  init = jax.eval_shape(lambda r: backbone.init(r, x), jax.random.key(0))
  assert jax.tree.map(lambda v: v.shape, init) == jax.tree.map(lambda v: v.shape, trimmed)
  features = backbone.apply(trimmed, x, taps=('high', 'C4', 'low', 'block_10'))
  np.testing.assert_allclose(features['high'], inter['head_conv']['__call__'][0], rtol=0, atol=0)
  np.testing.assert_allclose(features['C4'], inter['block_8']['expand']['__call__'][0], atol=0)
  np.testing.assert_allclose(features['low'], inter['block_1']['__call__'][0], atol=0)
  np.testing.assert_allclose(features['block_10'], inter['block_10']['__call__'][0], atol=0)
  assert np.abs(features['high'][0] - features['high'][1]).max() > 1e-3


@pytest.mark.parametrize('variant, low, c4', [('large', 40, 672), ('small', 24, 288)])
def test_tap_shapes_at_both_output_strides(variant, low, c4):
  head = {'large': 960, 'small': 576}[variant]
  taps = ('low', 'high', 'C4', 'C5', 'stem')
  at32 = shapes(MobileNetV3Backbone(variant=variant, depthwise_impl='conv'), taps)
  assert at32 == {'low': (8, 12, low), 'high': (2, 3, head), 'C4': (4, 6, c4),
                  'C5': (2, 3, head), 'stem': (32, 48, 16)}
  at16 = shapes(MobileNetV3Backbone(variant=variant, depthwise_impl='conv', output_stride=16),
                taps)
  assert at16 == {**at32, 'high': (4, 6, head), 'C5': (4, 6, head)}


def test_output_stride_16_dilates_the_last_stage_with_the_same_variables():
  large = MobileNetV3Backbone(variant='large', output_stride=16)
  assert large.tail_start() == 12
  assert large.dilations() == (1,) * 12 + (2,) * 3
  assert MobileNetV3Backbone(variant='small', output_stride=16).dilations() == (1,) * 8 + (2,) * 3
  assert MobileNetV3Backbone(variant='large').dilations() == (1,) * 15
  trees = [jax.eval_shape(lambda r, m=m: m.init(r, jnp.zeros((1, 64, 64, 3))), jax.random.key(0))
           for m in (MobileNetV3Backbone(**OPTIONS),
                     MobileNetV3Backbone(**OPTIONS, output_stride=16))]
  assert trees[0] == trees[1]


def test_output_stride_16_changes_only_the_last_stage():
  """Same variables: the features before the last stage are equal, the head's twice as large
  (numerics of the dilated stage: tests/interop/test_torch_lraspp.py against torchvision)."""
  x = jax.random.uniform(jax.random.key(3), (1, 64, 64, 3), minval=-1, maxval=1)
  m32, m16 = MobileNetV3Backbone(**OPTIONS), MobileNetV3Backbone(**OPTIONS, output_stride=16)
  variables = m32.init(jax.random.key(0), x)
  f32, f16 = (m.apply(variables, x, taps=('block_7', 'high')) for m in (m32, m16))
  np.testing.assert_array_equal(f32['block_7'], f16['block_7'])
  assert f32['high'].shape == (1, 2, 2, 288) and f16['high'].shape == (1, 4, 4, 288)


@pytest.mark.parametrize('variant, rule, tail', [
    ('large', 'torchvision', [(672, 80, 168), (480, 80, 120), (480, 80, 120)]),
    ('large', 'official', [(336, 80, 88), (480, 80, 120), (480, 80, 120)]),
    ('small', 'torchvision', [(288, 48, 72), (288, 48, 72), (288, 48, 72)]),
    ('small', 'official', [(144, 48, 40), (288, 48, 72), (288, 48, 72)]),
])
def test_reduced_tail_widths(variant, rule, tail):
  full = MobileNetV3Backbone(variant=variant)
  reduced = MobileNetV3Backbone(variant=variant, reduced_tail=rule)
  start = full.tail_start()
  assert reduced.block_specs()[:start] == full.block_specs()[:start]
  assert [(s.expanded, s.out, s.se_squeeze) for s in reduced.block_specs()[start:]] == tail
  # Only widths change.
  for a, b in zip(full.block_specs(), reduced.block_specs()):
    assert (a.kernel, a.stride, a.activation, a.expand) == (b.kernel, b.stride, b.activation,
                                                            b.expand)
  high = shapes(reduced.clone(depthwise_impl='conv'), ('high',), (64, 64))['high']
  assert high == (2, 2, 6 * tail[-1][1])


def test_dilated_depthwise_conv_matches_a_direct_sum():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 11, 9, 3)).astype(np.float32)
  kernel = rng.normal(size=(3, 3, 1, 3)).astype(np.float32)
  pads = blocks.spatial_padding(x.shape, 3, 1, 'symmetric', dilation=2)
  assert pads == ((2, 2), (2, 2)) == blocks.spatial_padding(x.shape, 3, 1, 'same', dilation=2)
  assert blocks.spatial_padding(x.shape, 5, 1, 'same', dilation=2) == ((4, 4), (4, 4))
  xp = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
  want = sum(xp[:, 2 * i:2 * i + 11, 2 * j:2 * j + 9] * kernel[i, j, 0]
             for i in range(3) for j in range(3))
  for impl in ('conv', 'shifted'):   # 'shifted' routes dilation > 1 to 'conv'
    got = depthwise.depthwise_conv(jnp.asarray(x), jnp.asarray(kernel), 1, pads, impl, 2)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  undilated = depthwise.depthwise_conv(jnp.asarray(x), jnp.asarray(kernel), 1,
                                       ((1, 1), (1, 1)), 'conv')
  assert np.abs(np.asarray(undilated) - want).max() > 0.1


def test_bad_options_and_taps_name_what_is_allowed():
  with pytest.raises(ValueError, match=r'Invalid output_stride 8; allowed: \[16, 32\]'):
    MobileNetV3Backbone(output_stride=8)
  with pytest.raises(ValueError, match=r"Unknown reduced_tail True; allowed: \['none', "
                                       r"'torchvision', 'official'\]"):
    MobileNetV3Backbone(reduced_tail=True)
  with pytest.raises(ValueError, match="Unknown variant 'tiny'"):
    MobileNetV3Backbone(variant='tiny')
  backbone = MobileNetV3Backbone(variant='large')
  assert [backbone.resolve_tap(n) for n in ('low', 'high', 'C4', 'C5', 'block_7/expand')] == [
      'block_3', 'head_conv', 'block_12/expand', 'head_conv', 'block_7/expand']
  for bad in ('C6', 'block_15', 'block_0/expand', 'block_-1'):
    with pytest.raises(ValueError, match=rf"Unknown tap '{bad}'; allowed: \['low', 'high', "
                                         r"'C4', 'C5'\].* i in 0\.\.14 \(no /expand for blocks "
                                         r"\[0\]"):
      backbone.resolve_tap(bad)
  with pytest.raises(ValueError, match="taps must be a sequence of tap names, not the string"):
    backbone.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), taps='low')
  with pytest.raises(ValueError, match=r'Invalid depthwise dilation 0; allowed: an integer >= 1'):
    depthwise.depthwise_conv(jnp.zeros((1, 8, 8, 2)), jnp.zeros((3, 3, 1, 2)), 1,
                             ((1, 1), (1, 1)), 'conv', 0)
  with pytest.raises(ValueError, match=r'ConvBN dilation 2 not allowed for a dense or 1x1 conv'):
    blocks.ConvBN(4, dilation=2).init(jax.random.key(0), jnp.zeros((1, 4, 4, 2)), False)
