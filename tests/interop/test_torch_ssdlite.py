"""torchvision SSDLite320 MobileNetV3 -> Flax: raw head outputs equal torchvision's; parameter
count; what does not fit is named.

The reference is torchvision's own ssdlite320_mobilenet_v3_large (weights=None,
weights_backbone=None: the reduced tail its COCO weights have), or the same construction on
mobilenet_v3_small (torchvision has no Small builder), with random weights and random
BatchNorm statistics (tests/interop/torch_reference.py); its backbone and head are called directly,
as SSD.forward calls them, on images its transform normalises ((x - 0.5) / 0.5), in float64. Ours
sees the same images as 2x - 1.

Float32 rounding: a randomly initialised network with BatchNorm amplifies small input changes by
~1.4x per layer, so the float32 rounding error grows with depth. On the three deepest maps (the
stride 128-512 extras: 84 of 3234 default boxes) torchvision's own float32 forward is already
1e-5 to 4e-5 off the exact outputs; there the bound is 2e-4, still far below what any misplaced
weight gives (> 1e-2).
"""
import functools

import jax
import numpy as np
import pytest
import torch

from mnv3_jax.interop import torch_ssdlite
from mnv3_jax.tasks.detection import anchors, ssdlite
from tests.interop import torch_reference
from tests.tasks.detection import torchvision_detection as tv

SIZE = (320, 320)
CLASSES = 11
TOLERANCE = 1e-5          # maps at strides 16, 32, 64
DEEP_TOLERANCE = 2e-4     # maps at strides 128, 256, 512


class RawOutputs(torch.nn.Module):
  """SSD's backbone and head as SSD.forward calls them: (N, A, 4 + classes), before NMS."""

  def __init__(self, ssd):
    super().__init__()
    self.backbone, self.head = ssd.backbone, ssd.head

  def forward(self, x):
    out = self.head(list(self.backbone(x).values()))
    return torch.cat([out['bbox_regression'], out['cls_logits']], -1)


def torchvision_ssdlite(variant, num_classes=CLASSES):
  """torchvision's SSDLite320 on MobileNetV3 `variant`, as its Large builder makes it."""
  if variant == 'large':
    return tv.ssdlite.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                    num_classes=num_classes)
  norm = functools.partial(torch.nn.BatchNorm2d, eps=0.001, momentum=0.03)
  backbone = tv.ssdlite._mobilenet_extractor(  # pylint: disable=protected-access
      tv.mobilenetv3.mobilenet_v3_small(norm_layer=norm, reduced_tail=True), 6, norm)
  boxes = tv.anchor_utils.DefaultBoxGenerator([[2, 3]] * 6, min_ratio=0.2, max_ratio=0.95)
  head = tv.ssdlite.SSDLiteHead(tv.det_utils.retrieve_out_channels(backbone, SIZE),
                                boxes.num_anchors_per_location(), num_classes, norm)
  return tv.ssd.SSD(backbone, boxes, SIZE, num_classes, head=head, image_mean=[0.5] * 3,
                    image_std=[0.5] * 3)


@functools.lru_cache(maxsize=None)
def reference(variant='large'):
  """(torchvision's SSD, its randomised RawOutputs), built once per variant."""
  model = torchvision_ssdlite(variant)
  return model, torch_reference.randomize(RawOutputs(model), seed=0, image_size=SIZE)


def map_slices():
  """The default boxes of each feature map, as slices of A."""
  counts = [h * w * p for (h, w), p in zip(anchors.feature_map_sizes(SIZE),
                                           anchors.boxes_per_location())]
  ends = np.cumsum(counts)
  return [slice(e - c, e) for c, e in zip(counts, ends)]


def relative_errors(got, want):
  """Per map, per part (regressions, logits): max|got - want| / max|want|."""
  return np.array([[np.abs(got[:, m, p] - want[:, m, p]).max() / np.abs(want[:, m, p]).max()
                    for p in (slice(0, 4), slice(4, None))] for m in map_slices()])


@pytest.mark.parametrize('variant', ['large', 'small'])
def test_raw_outputs_equal_torchvision(variant):
  model, raw = reference(variant)
  images01 = np.random.default_rng(1).uniform(0, 1, (2, *SIZE, 3)).astype(np.float32)
  nchw = torch.stack([model.transform.normalize(torch.from_numpy(i.transpose(2, 0, 1)))
                      for i in images01])
  want = torch_reference.logits(raw, nchw.numpy().transpose(0, 2, 3, 1))    # float64
  flax_model = torch_ssdlite.torchvision_model(variant, CLASSES, depthwise_impl='conv')
  variables = torch_ssdlite.from_torchvision(raw.state_dict(), flax_model)
  box, cls = jax.jit(flax_model.apply)(variables, images01 * 2 - 1)
  got = np.concatenate([box, cls], -1)
  assert got.shape == want.shape == (2, 3234, 4 + CLASSES)
  assert flax_model.default_boxes(SIZE).shape == (3234, 4)
  assert np.abs(want[0] - want[1]).max() > 0.1 * np.abs(want).max()   # the images differ
  errors = relative_errors(got, want)
  assert errors[:3].max() <= TOLERANCE, errors
  assert errors[3:].max() <= DEEP_TOLERANCE, errors
  with torch.no_grad():   # the deep maps' bound is float32's: torchvision's own is as far off
    torch_float32 = raw(nchw).numpy()
  assert relative_errors(torch_float32, want)[3:].max() > TOLERANCE


def test_parameter_count_is_torchvisions():
  """3,440,060 for 91 classes: torchvision's figure for its COCO weights."""
  model = torch_ssdlite.torchvision_model(num_classes=91)
  shapes = jax.eval_shape(lambda rng: ssdlite.init_variables(model, rng), jax.random.key(0))
  assert sum(np.prod(p.shape) for p in jax.tree.leaves(shapes['params'])) == 3_440_060
  assert sum(p.numel() for p in torchvision_ssdlite('large', 91).parameters()) == 3_440_060


def test_variables_land_where_they_belong():
  state = reference()[1].state_dict()
  variables = torch_ssdlite.from_torchvision(state, torch_ssdlite.torchvision_model(
      num_classes=CLASSES))
  params, stats = variables['params'], variables['batch_stats']
  np.testing.assert_array_equal(   # C4: the expansion of bneck 13, ending backbone.features.0
      params['backbone']['block_12']['expand']['conv']['kernel'],
      state['backbone.features.0.13.0.weight'].numpy()[:, :, 0, 0].T)
  np.testing.assert_array_equal(   # its depthwise conv, starting backbone.features.1
      params['backbone']['block_12']['depthwise']['conv']['kernel'],
      state['backbone.features.1.0.1.0.weight'].numpy().transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(stats['backbone']['head_conv']['bn']['var'],
                                state['backbone.features.1.3.1.running_var'].numpy())
  np.testing.assert_array_equal(stats['extra_3_depthwise']['bn']['mean'],
                                state['backbone.extra.3.1.1.running_mean'].numpy())
  np.testing.assert_array_equal(params['head']['class_5']['bias'],
                                state['head.classification_head.module_list.5.1.bias'].numpy())


def test_what_does_not_fit_is_named():
  state = dict(reference()[1].state_dict())
  model = torch_ssdlite.torchvision_model(num_classes=CLASSES)
  with pytest.raises(ValueError, match=r"backbone.reduced_tail='none' \(needs 'torchvision'\)"):
    torch_ssdlite.from_torchvision(state, model.clone(
        backbone=model.backbone.clone(reduced_tail='none')))
  with pytest.raises(ValueError, match=r'(?s)num_classes=91\):\n  shape mismatches: '
                     r'head.classification_head.module_list.0.1.weight \(66, 672, 1, 1\)'):
    torch_ssdlite.from_torchvision(state, model.clone(num_classes=91))
  state['head.extra_weight'] = state.pop('backbone.extra.0.0.0.weight')
  with pytest.raises(ValueError, match=r'(?s)left unused: head.extra_weight \(256, 480, 1, 1\).*'
                     r'without a torchvision weight: params/extra_0_expand/conv/kernel'):
    torch_ssdlite.from_torchvision(state, model)


def test_imports_from_a_file(tmp_path):
  state = reference()[1].state_dict()
  path = tmp_path / 'ssdlite.pth'
  torch.save(state, path)
  model = torch_ssdlite.torchvision_model(num_classes=CLASSES)
  jax.tree.map(np.testing.assert_array_equal, torch_ssdlite.from_torchvision(path, model),
               torch_ssdlite.from_torchvision(state, model))
  with pytest.raises(ValueError, match='source must be a state dict or a file path; got int'):
    torch_ssdlite.from_torchvision(3, model)


def test_coco_contiguous_classes_are_torchvisions_slots_gathered():
  """classes='coco_contiguous': the 81-class model's logits are the 91-slot model's at the
  background and COCO_CATEGORY_IDS; its box regressions are the same."""
  state = torch_reference.randomize(RawOutputs(torchvision_ssdlite('large', 91)), seed=2,
                                    image_size=SIZE).state_dict()
  images = np.random.default_rng(4).uniform(-1, 1, (1, *SIZE, 3)).astype(np.float32)
  slots = torch_ssdlite.torchvision_model(num_classes=91, depthwise_impl='conv')
  contiguous = slots.clone(num_classes=81)
  box91, cls91 = jax.jit(slots.apply)(torch_ssdlite.from_torchvision(state, slots), images)
  box81, cls81 = jax.jit(contiguous.apply)(
      torch_ssdlite.from_torchvision(state, contiguous, classes='coco_contiguous'), images)
  cls91, cls81 = np.asarray(cls91), np.asarray(cls81)
  assert cls81.shape == (1, 3234, 81)
  np.testing.assert_array_equal(box81, box91)
  scale = np.abs(cls91).max()
  gathered = cls91[..., [0, *torch_ssdlite.COCO_CATEGORY_IDS]]
  # Not bitwise: XLA's matmul blocking differs with the output width (81 vs 91 x 6 channels);
  # seen 1.4e-6 of logits up to 5.4 (2.6e-7 of the scale); misplaced channels give > 1.
  assert np.abs(cls81 - gathered).max() <= 1e-6 * scale
  assert np.abs(cls81 - cls91[..., :81]).max() > 0.1 * scale   # the gather is not a no-op


def test_coco_category_ids_are_torchvisions_named_slots():
  """The 80 ids are the slots torchvision names (not 'N/A'), ascending: TFDS coco's order."""
  from torchvision.models import _meta  # pylint: disable=g-import-not-at-top  (after tv's stub)
  names = _meta._COCO_CATEGORIES  # pylint: disable=protected-access
  assert len(names) == 91
  assert torch_ssdlite.COCO_CATEGORY_IDS == tuple(
      i for i, name in enumerate(names) if name not in ('__background__', 'N/A'))


def test_coco_contiguous_parameter_count():
  """3,301,460: the 91-slot 3,440,060 less 10 slots x 6 boxes x (C_k + 1) weights per map, C_k =
  672, 480, 512, 256, 256, 128 (2,310 with the biases): 138,600; torchvision's 81-class figure."""
  state = torchvision_ssdlite('large', 91).state_dict()
  model = torch_ssdlite.torchvision_model(num_classes=81)
  variables = torch_ssdlite.from_torchvision(state, model, classes='coco_contiguous')
  assert sum(p.size for p in jax.tree.leaves(variables['params'])) == 3_301_460
  assert sum(p.numel() for p in torchvision_ssdlite('large', 81).parameters()) == 3_301_460


def test_classes_that_do_not_fit_are_named():
  state = reference()[1].state_dict()    # 11 classes
  model = torch_ssdlite.torchvision_model(num_classes=81)
  with pytest.raises(ValueError, match=r"Unknown classes 'coco'; allowed: \['torchvision', "
                                       r"'coco_contiguous'\]"):
    torch_ssdlite.from_torchvision(state, model, classes='coco')
  with pytest.raises(ValueError, match=r'gives 81 classes .* has num_classes=91'):
    torch_ssdlite.from_torchvision(state, model.clone(num_classes=91), classes='coco_contiguous')
  with pytest.raises(ValueError, match=r"needs torchvision's 91 class slots: head.classification_"
                                       r'head.module_list.0.1.weight \(66, 672, 1, 1\) has 66 '
                                       r'output channels, not 6 boxes x 91'):
    torch_ssdlite.from_torchvision(state, model, classes='coco_contiguous')
