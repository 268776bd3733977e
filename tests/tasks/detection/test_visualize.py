"""The detection picture: boxes at their pixels in their class colour, filtering, layout, checks."""
import io

import numpy as np
import pytest
from PIL import Image

from mnv3_jax.tasks.detection import visualize
from mnv3_jax.tasks.segmentation.visualize import palette

NAMES = ('circle', 'rectangle', 'triangle')
GAP, LEGEND = visualize.GAP, visualize.LEGEND


def _inputs(n=1, h=8, w=10, seed=0):
  """Random images, one valid ground-truth row and one valid detection row per image."""
  images = np.random.default_rng(seed).uniform(-1, 1, (n, h, w, 3)).astype(np.float32)
  boxes = np.tile(np.array([[[1., 2., 4., 7.]]]), (n, 1, 1))
  return dict(images=images, truth_boxes=boxes, truth_labels=np.full((n, 1), 2),
              truth_valid=np.ones((n, 1), bool), det_boxes=boxes, det_scores=np.full((n, 1), 0.9),
              det_labels=np.full((n, 1), 3), det_valid=np.ones((n, 1), bool), class_names=NAMES)


def _panel(picture, row, col, h, w, scale):
  top, left = GAP + row * (h * scale + GAP), GAP + col * (w * scale + GAP)
  return picture[top:top + h * scale, left:left + w * scale]


def _expected(image, boxes_and_labels, scale, thickness=2):
  """The upscaled image with each (x1, y1, x2, y2) integer box outlined, written independently."""
  pixels = np.clip(np.round((image + 1) * 127.5), 0, 255).astype(np.uint8)
  out = np.kron(pixels, np.ones((scale, scale, 1), np.uint8))
  for (x1, y1, x2, y2), label in boxes_and_labels:
    x1, y1, x2, y2 = (int(v * scale) for v in (x1, y1, x2, y2))
    x2, y2 = min(x2, out.shape[1]), min(y2, out.shape[0])
    ring = np.zeros(out.shape[:2], bool)
    ring[y1:y2, x1:x2] = True
    ring[y1 + thickness:y2 - thickness, x1 + thickness:x2 - thickness] = False
    out[ring] = palette(len(NAMES) + 1)[label]
  return out


def test_boxes_drawn_at_their_pixels_in_class_colour_interior_untouched():
  args = _inputs(h=8, w=10)
  picture = visualize.grid(**args, scale=2)
  truth, det = _panel(picture, 0, 0, 8, 10, 2), _panel(picture, 0, 1, 8, 10, 2)
  # box (1, 2, 4, 7) x 2: columns 2..7, rows 4..13; outline 2 px; the rest is the image.
  np.testing.assert_array_equal(truth, _expected(args['images'][0], [((1, 2, 4, 7), 2)], 2))
  np.testing.assert_array_equal(det, _expected(args['images'][0], [((1, 2, 4, 7), 3)], 2))
  colour = palette(4)[2]
  assert (truth[4, 2] == colour).all() and (truth[13, 7] == colour).all()  # corners
  assert (truth[4:14, 8] != colour).any()  # first column right of the box: the image
  inside = truth[6:12, 4:6]
  np.testing.assert_array_equal(inside, _expected(args['images'][0], [], 2)[6:12, 4:6])


def test_low_scores_and_invalid_rows_not_drawn():
  args = _inputs()
  args.update(det_boxes=np.array([[[0., 0., 3., 3.], [5., 1., 9., 6.], [2., 4., 6., 8.]]]),
              det_scores=np.array([[0.49, 0.5, 0.99]]), det_labels=np.array([[1, 2, 3]]),
              det_valid=np.array([[True, True, False]]), truth_valid=np.array([[False]]),
              truth_labels=np.array([[0]]))  # an invalid row may hold any label
  picture = visualize.grid(**args, score_threshold=0.5, scale=1)
  image = args['images'][0]
  np.testing.assert_array_equal(_panel(picture, 0, 0, 8, 10, 1), _expected(image, [], 1))
  np.testing.assert_array_equal(_panel(picture, 0, 1, 8, 10, 1),
                                _expected(image, [((5, 1, 9, 6), 2)], 1))  # score 0.5 >= 0.5 only


def test_higher_score_drawn_on_top():
  args = _inputs()
  args.update(det_boxes=np.array([[[1., 2., 4., 7.]] * 2]), det_scores=np.array([[0.9, 0.8]]),
              det_labels=np.array([[1, 2]]), det_valid=np.ones((1, 2), bool))
  picture = visualize.grid(**args, scale=2)
  np.testing.assert_array_equal(_panel(picture, 0, 1, 8, 10, 2),
                                _expected(args['images'][0], [((1, 2, 4, 7), 1)], 2))


def test_boxes_clipped_to_the_image():
  args = _inputs(h=8, w=10)
  args.update(truth_boxes=np.array([[[6., -3., 14., 5.], [12., 9., 20., 15.]]]),
              truth_labels=np.array([[1, 2]]), truth_valid=np.ones((1, 2), bool))
  picture = visualize.grid(**args, scale=2)
  expected = _expected(args['images'][0], [((6, 0, 10, 5), 1)], 2)  # the second lies outside
  np.testing.assert_array_equal(_panel(picture, 0, 0, 8, 10, 2), expected)


def test_shape_rows_and_png():
  args = _inputs(n=3, h=8, w=40)
  picture = visualize.grid(**args, scale=3)
  assert picture.dtype == np.uint8
  assert picture.shape == (3 * (24 + GAP) + GAP + LEGEND, 2 * 120 + 3 * GAP, 3)
  for row in range(3):
    for col, label in enumerate((2, 3)):
      np.testing.assert_array_equal(_panel(picture, row, col, 8, 40, 3),
                                    _expected(args['images'][row], [((1, 2, 4, 7), label)], 3))
  data = visualize.png(picture)
  np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data)).convert('RGB')), picture)


def _swatches(strip):
  return [int((strip == colour).all(-1).sum()) for colour in palette(len(NAMES) + 1)[1:]]


def test_legend_shows_the_drawn_classes_and_wraps():
  args = _inputs(h=8, w=100)  # ground truth class 2, detection class 3
  legend = visualize.grid(**args, scale=2)[GAP + 16 + GAP:]
  assert legend.shape[0] == LEGEND and _swatches(legend) == [0, 100, 100]
  narrow = dict(args, images=args['images'][:, :, :10])  # 32 px wide: one class a line
  legend = visualize.grid(**narrow, scale=1)[GAP + 8 + GAP:]
  assert legend.shape[0] == 2 * LEGEND
  assert _swatches(legend[:LEGEND]) == [0, 100, 0] and _swatches(legend[LEGEND:]) == [0, 0, 100]
  nothing = dict(args, truth_valid=np.zeros((1, 1), bool), det_valid=np.zeros((1, 1), bool))
  assert visualize.grid(**nothing, scale=2).shape[0] == GAP + 16 + GAP  # no boxes, no legend


@pytest.mark.parametrize('change, message', [
    (dict(scale=0), 'Invalid scale 0'),
    (dict(scale=1.5), 'Invalid scale 1.5'),
    (dict(score_threshold=1.5), 'Invalid score_threshold 1.5'),
    (dict(class_names=()), 'Invalid class_names'),
    (dict(class_names='circle'), 'Invalid class_names'),
    (dict(images=np.zeros((1, 8, 10))), r'Invalid images shape \(1, 8, 10\)'),
    (dict(truth_boxes=np.zeros((1, 2, 4))),
     r'Invalid truth_boxes shape \(1, 2, 4\); allowed: \(1, 1, 4\)'),
    (dict(det_scores=np.zeros((2, 1))), r'Invalid det_scores shape \(2, 1\)'),
    (dict(truth_labels=np.array([[4]])), r'Invalid truth_labels \[4\].*allowed: 1..3'),
    (dict(det_labels=np.array([[0]])), r'Invalid det_labels \[0\]'),
    (dict(det_labels=np.array([[1.]])), 'Invalid det_labels dtype float64'),
    (dict(truth_boxes=np.array([[[0, 0, np.nan, 3]]])), 'Invalid truth_boxes: a valid row is not'),
])
def test_bad_inputs_raise(change, message):
  args = dict(_inputs(), **change)
  with pytest.raises(ValueError, match=message):
    visualize.grid(**args)
