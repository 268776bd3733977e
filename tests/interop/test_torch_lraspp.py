"""torchvision LR-ASPP -> Flax: output parity with torchvision's own model (random weights and
BN statistics), the variables' tree, files, and what does not fit.

References: torchvision's `lraspp_mobilenet_v3_large` and its `_lraspp_mobilenetv3` on
`mobilenet_v3_small(dilated=True)` (torchvision has no Small builder) and on
`mobilenet_v3_large(dilated=True, reduced_tail=True)`, built without weights.
"""
import copy
import functools
import re

import jax
import numpy as np
import pytest
import torch

from mnv3_jax.interop import torch_lraspp
from mnv3_jax.tasks.segmentation import lraspp
from tests.interop import torch_models, torch_reference

TOLERANCE = 1e-5
CLASSES = {'large': 21, 'small': 5, 'large_reduced': 4}
# Random Large networks amplify float32 rounding: over seeds 1-4 at 96x128, torchvision's own
# float32 forward is 0.5-1.8e-5 (max |delta| / max |ref|) off its float64 one, ours 0.4-2.6e-5.
# With this seed both are ~5e-6 at both sizes, so 1e-5 tells a mapping error from rounding.
SEED = 3


@functools.lru_cache(maxsize=None)
def reference(variant):
  """torchvision's LR-ASPP on MobileNetV3 `variant`, random weights and BN statistics, eval."""
  torch_models._stub_torchvision()   # pylint: disable=protected-access
  from torchvision.models import mobilenetv3  # pylint: disable=g-import-not-at-top
  from torchvision.models.segmentation import lraspp as tv_lraspp  # pylint: disable=g-import-not-at-top
  if variant == 'large':
    module = tv_lraspp.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                 num_classes=CLASSES[variant])
  else:
    backbone = (mobilenetv3.mobilenet_v3_small(dilated=True) if variant == 'small' else
                mobilenetv3.mobilenet_v3_large(dilated=True, reduced_tail=True))
    module = tv_lraspp._lraspp_mobilenetv3(  # pylint: disable=protected-access
        backbone, CLASSES[variant])
  return torch_reference.randomize(module, seed=SEED, image_size=(64, 64),
                                   input_fn=torch_reference.imagenet_normalized)


def reference_out(variant, images_nhwc):
  """torchvision's model(x)['out'] of [-1, 1] NHWC images, computed in float64, as NHWC."""
  exact = copy.deepcopy(reference(variant)).double()
  x = torch_reference.imagenet_normalized(images_nhwc).transpose(0, 3, 1, 2)
  with torch.no_grad():
    return exact(torch.from_numpy(x.astype(np.float64)))['out'].numpy().transpose(0, 2, 3, 1)


def images(size, seed=3):
  return np.random.default_rng(seed).uniform(-1, 1, (2, *size, 3)).astype(np.float32)


def flax_model(variant, **options):
  if variant == 'large_reduced':
    return torch_lraspp.torchvision_model('large', CLASSES[variant], reduced_tail='torchvision',
                                          **options)
  return torch_lraspp.torchvision_model(variant, CLASSES[variant], **options)


def flax_out(model, variables, x):
  apply = jax.jit(lambda v, x: model.apply(v, x),
                  compiler_options={'xla_backend_optimization_level': 0})
  return np.asarray(apply(variables, x))


@pytest.mark.parametrize('variant, size', [('large', (64, 64)), ('large', (96, 128)),
                                           ('small', (96, 128)), ('large_reduced', (64, 96))])
def test_output_matches_torchvision(variant, size, tmp_path):
  model = flax_model(variant, depthwise_impl='conv')
  path = tmp_path / 'lraspp.pth'
  torch.save(reference(variant).state_dict(), path)
  x = images(size)
  ref = reference_out(variant, x)
  out = flax_out(model, torch_lraspp.from_torchvision(path, model), x)
  assert out.shape == ref.shape == (2, *size, CLASSES[variant])
  scale = np.abs(ref).max()
  # The two images' outputs differ: the comparison sees each input's path through every layer.
  assert np.abs(ref[0] - ref[1]).max() > 0.1 * scale
  assert np.abs(out - ref).max() / scale <= TOLERANCE


def test_variables_have_init_tree_and_reference_values():
  model = torch_lraspp.torchvision_model('small', CLASSES['small'], depthwise_impl='conv')
  state = reference('small').state_dict()
  variables = torch_lraspp.from_torchvision(state, model)
  init = jax.eval_shape(lambda r: lraspp.init_variables(model, r, (64, 64)), jax.random.key(0))
  assert jax.tree.structure(variables) == jax.tree.structure(init)
  params, stats = variables['params'], variables['batch_stats']
  np.testing.assert_array_equal(params['head']['scale']['kernel'],
                                state['classifier.scale.1.weight'].numpy()[:, :, 0, 0].T)
  np.testing.assert_array_equal(params['head']['low_classifier']['bias'],
                                state['classifier.low_classifier.bias'].numpy())
  np.testing.assert_array_equal(stats['head']['cbr']['bn']['var'],
                                state['classifier.cbr.1.running_var'].numpy())
  np.testing.assert_array_equal(params['backbone']['block_8']['depthwise']['conv']['kernel'],
                                state['backbone.9.block.1.0.weight'].numpy().transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(stats['backbone']['head_conv']['bn']['mean'],
                                state['backbone.12.1.running_mean'].numpy())


def test_options_the_weights_do_not_show_are_checked():
  model = torch_lraspp.torchvision_model('small', CLASSES['small'])
  wrong = model.clone(backbone=model.backbone.clone(output_stride=32, padding='same'),
                      pooling='paper')
  with pytest.raises(ValueError, match=re.escape(
      "backbone.padding='same' (needs 'symmetric'); backbone.output_stride=32 (needs 16); "
      "pooling='paper' (needs 'global')")):
    torch_lraspp.from_torchvision({}, wrong)
  with pytest.raises(ValueError, match=r"head_bn_epsilon=0.001 \(needs 1e-05\)"):
    torch_lraspp.from_torchvision({}, model.clone(head_bn_epsilon=1e-3))
  with pytest.raises(ValueError, match=r"backbone.reduced_tail='official' \(needs one of "
                                       r"\['none', 'torchvision'\]\)"):
    torch_lraspp.from_torchvision({}, flax_model('small', reduced_tail='official'))


def test_weights_that_do_not_fit_are_named():
  state = reference('small').state_dict()
  small = torch_lraspp.torchvision_model('small', CLASSES['small'])
  with pytest.raises(ValueError, match=re.escape(
      'classifier.low_classifier.weight (5, 24, 1, 1) -> params/head/low_classifier/kernel has '
      'shape (24, 5) but the Flax model expects (24, 7)')):
    torch_lraspp.from_torchvision(state, small.clone(num_classes=7))
  with pytest.raises(ValueError, match=r"(?s)does not fit LRASPPMobileNetV3\(variant='large', "
                                       r"num_classes=5.*Flax leaves without a torchvision weight"):
    torch_lraspp.from_torchvision(state, torch_lraspp.torchvision_model('large', 5))
  extra = {**state, 'classifier.extra.weight': torch.zeros(3)}
  with pytest.raises(ValueError, match=r'torchvision weights left unused: classifier.extra.weight'):
    torch_lraspp.from_torchvision(extra, small)
  with pytest.raises(ValueError, match='source must be a state dict or a file path; got int'):
    torch_lraspp.from_torchvision(3, small)
