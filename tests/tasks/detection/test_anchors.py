"""Default boxes: equal to torchvision's DefaultBoxGenerator as SSDLite320 configures it."""
import numpy as np
import pytest
import torch

from mnv3_jax.tasks.detection import anchors
from tests.tasks.detection import torchvision_detection as tv


def torchvision_boxes(image_size, map_sizes):
  generator = tv.anchor_utils.DefaultBoxGenerator([[2, 3]] * 6, min_ratio=0.2, max_ratio=0.95)
  images = tv.ImageList(torch.zeros((1, 3, *image_size)), [tuple(image_size)])
  maps = [torch.zeros((1, 1, h, w)) for h, w in map_sizes]
  return generator(images, maps)[0].numpy()


@pytest.mark.parametrize('image_size', [(320, 320), (257, 190)])
def test_equal_to_torchvision(image_size):
  ours = anchors.default_boxes(image_size)
  want = torchvision_boxes(image_size, anchors.feature_map_sizes(image_size))
  assert ours.shape == want.shape and ours.dtype == np.float32
  np.testing.assert_allclose(ours, want, rtol=0, atol=1e-4)


def test_ssdlite320_layout():
  assert anchors.feature_map_sizes((320, 320)) == ((20, 20), (10, 10), (5, 5), (3, 3), (2, 2),
                                                   (1, 1))
  assert anchors.boxes_per_location() == (6,) * 6
  boxes = anchors.default_boxes((320, 320))
  assert boxes.shape == (3234, 4)
  # First location of the 20x20 map: centre (8, 8), the 0.2-scale square first.
  np.testing.assert_allclose(boxes[0], [-24, -24, 40, 40], atol=1e-4)
  # The last map's second box has scale sqrt(0.95 * 1.0), clipped to at most the image.
  np.testing.assert_allclose(boxes[-5], 160 + np.sqrt(0.95) * 160 * np.array([-1, -1, 1, 1]),
                             atol=1e-3)


def test_map_sizes_are_those_of_torchvision_ssdlite():
  model = tv.ssdlite.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None).eval()
  with torch.no_grad():
    maps = model.backbone(torch.zeros((1, 3, 257, 190)))
  assert tuple(tuple(m.shape[-2:]) for m in maps.values()) == anchors.feature_map_sizes((257, 190))


@pytest.mark.parametrize('call, match', [
    (lambda: anchors.default_boxes((320,)), r'Invalid image_size \(320,\)'),
    (lambda: anchors.default_boxes((0, 320)), r'Invalid image_size \(0, 320\)'),
    (lambda: anchors.feature_map_sizes(320), r'Invalid image_size 320'),
    (lambda: anchors.default_boxes((32, 32), min_ratio=0.9, max_ratio=0.2),
     r'Invalid \(min_ratio, max_ratio\) \(0.9, 0.2\)'),
    (lambda: anchors.default_boxes((32, 32), aspect_ratios=[[2, -1]]), 'Invalid aspect_ratios'),
    (lambda: anchors.default_boxes((32, 32), map_sizes=[(2, 2)]), 'one per entry'),
])
def test_bad_input(call, match):
  with pytest.raises(ValueError, match=match):
    call()
