"""A picture of detection results: per example, the image with its ground-truth boxes | the image
with the detections scoring >= a threshold, then a legend of the classes drawn.

Boxes are outlined in their class's colour (segmentation's palette: label k in 1..K gets colour k,
so a class looks the same in both tasks). `png` encodes the picture for a file or a summary.
"""
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mnv3_jax.tasks.segmentation.visualize import palette, png_bytes

GAP = 4  # white pixels around and between the panels
LEGEND = 16  # pixel height of a line of the legend under the rows
BACKGROUND = (255, 255, 255)


def _check(name: str, value, shape: tuple) -> np.ndarray:
  """`value` as an array of `shape` (None: any size), else a ValueError naming it."""
  value = np.asarray(value)
  if value.ndim != len(shape) or any(s is not None and s != v for s, v in zip(shape, value.shape)):
    allowed = '(' + ', '.join('any' if s is None else str(s) for s in shape) + ')'
    raise ValueError(f'Invalid {name} shape {value.shape}; allowed: {allowed}.')
  return value


def _check_rows(kind: str, boxes: np.ndarray, labels: np.ndarray, valid: np.ndarray,
                num_classes: int):
  """ValueError unless the valid rows have finite boxes and integer labels in 1..num_classes."""
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f'Invalid {kind}_labels dtype {labels.dtype}; allowed: integers.')
  bad = labels[valid & ((labels < 1) | (labels > num_classes))]
  if bad.size:
    raise ValueError(f'Invalid {kind}_labels {bad.tolist()} in valid rows; allowed: '
                     f'1..{num_classes} (one per class name).')
  if not np.isfinite(boxes[valid]).all():
    raise ValueError(f'Invalid {kind}_boxes: a valid row is not finite; allowed: finite pixels.')


def draw_box(panel: np.ndarray, box: np.ndarray, colour, scale: int, thickness: int = 2):
  """Outlines `box` (x1, y1, x2, y2) in input pixels on `panel` (H*scale, W*scale, 3) in place.

  The outline is `thickness` panel pixels wide, inside the box's scaled extent, clipped to the
  panel; a box with no area inside the panel draws nothing.
  """
  h, w = panel.shape[:2]
  x1, x2 = np.clip(np.asarray(box[0::2], np.float64) * scale, 0, w)
  y1, y2 = np.clip(np.asarray(box[1::2], np.float64) * scale, 0, h)
  left, top = int(np.floor(x1)), int(np.floor(y1))
  right, bottom = int(np.ceil(x2)), int(np.ceil(y2))
  if right <= left or bottom <= top:
    return
  panel[top:top + thickness, left:right] = colour
  panel[max(top, bottom - thickness):bottom, left:right] = colour
  panel[top:bottom, left:left + thickness] = colour
  panel[top:bottom, max(left, right - thickness):right] = colour


def _legend(width: int, names: Sequence[str], colours: np.ndarray) -> np.ndarray:
  """uint8 (LEGEND * lines, width, 3): a swatch and each name, left to right, wrapped at `width`."""
  font, places, x, line = ImageFont.load_default(), [], GAP, 0
  for name in names:
    item = 12 + int(np.ceil(font.getlength(name))) + 2 * GAP
    if x > GAP and x + item > width:
      x, line = GAP, line + 1
    places.append((x, line * LEGEND))
    x += item
  strip = Image.new('RGB', (width, LEGEND * (line + 1) if names else 0), BACKGROUND)
  draw = ImageDraw.Draw(strip)
  for name, colour, (x, y) in zip(names, colours, places):
    draw.rectangle((x, y + 3, x + 9, y + 12), fill=tuple(int(c) for c in colour))
    draw.text((x + 12, y + 2), name, fill=(0, 0, 0), font=font)
  return np.asarray(strip).reshape(-1, width, 3)


def grid(images, truth_boxes, truth_labels, truth_valid, det_boxes, det_scores, det_labels,
         det_valid, class_names: Sequence[str], score_threshold: float = 0.5,
         scale: int = 2) -> np.ndarray:
  """One uint8 (N * (H*scale + GAP) + GAP + LEGEND * L, 2 * W*scale + 3 * GAP, 3) RGB picture.

  images: (N, H, W, 3) float in [-1, 1] (the network input); truth_boxes (N, G, 4), truth_labels
  (N, G) int in 1..K, truth_valid (N, G) bool: the eval batch's 'boxes', 'labels', 'valid';
  det_boxes (N, D, 4), det_scores (N, D), det_labels (N, D) in 1..K, det_valid (N, D) bool: batched
  `nms.Detections`. Boxes are (x1, y1, x2, y2) in pixels of the H x W input. class_names: the K
  names, label k -> class_names[k - 1]. Row r: panel (r, 0) = image r with its valid ground truth,
  panel (r, 1) = image r with its valid detections of score >= score_threshold (where boxes
  overlap, an earlier row, for detections a higher score, is drawn on top); each panel is
  enlarged `scale` times (nearest neighbour) and its top-left pixel is at
  (GAP + r * (H*scale + GAP), GAP + c * (W*scale + GAP)). Under the rows, a legend of the classes
  drawn (swatch and name, in label order) in L >= 0 lines of LEGEND pixels.
  """
  if not isinstance(scale, int) or isinstance(scale, bool) or scale < 1:
    raise ValueError(f'Invalid scale {scale!r}; allowed: an integer >= 1.')
  if not 0 <= score_threshold <= 1:
    raise ValueError(f'Invalid score_threshold {score_threshold!r}; allowed: a number in [0, 1].')
  if isinstance(class_names, str) or not class_names or not all(
      isinstance(name, str) for name in class_names):
    raise ValueError(f'Invalid class_names {class_names!r}; allowed: a non-empty sequence of str.')
  n, h, w, _ = _check('images', images, (None, None, None, 3)).shape
  g, d = (_check(name, x, (n, None)).shape[1] for name, x in
          (('truth_labels', truth_labels), ('det_labels', det_labels)))
  truth = [_check('truth_boxes', truth_boxes, (n, g, 4)), np.asarray(truth_labels),
           _check('truth_valid', truth_valid, (n, g)).astype(bool)]
  det = [_check('det_boxes', det_boxes, (n, d, 4)), np.asarray(det_labels),
         _check('det_valid', det_valid, (n, d)).astype(bool)
         & (_check('det_scores', det_scores, (n, d)) >= score_threshold)]
  _check_rows('truth', *truth, len(class_names))
  _check_rows('det', *det, len(class_names))

  colours = palette(len(class_names) + 1)
  pixels = np.clip(np.round((np.asarray(images, np.float32) + 1) * 127.5), 0, 255).astype(np.uint8)
  ph, pw = h * scale, w * scale
  canvas = np.full((n * (ph + GAP) + GAP, 2 * pw + 3 * GAP, 3), BACKGROUND, np.uint8)
  for r in range(n):
    for c, (boxes, labels, valid) in enumerate((truth, det)):
      panel = pixels[r].repeat(scale, axis=0).repeat(scale, axis=1)
      for box, label in list(zip(boxes[r][valid[r]], labels[r][valid[r]]))[::-1]:  # first on top
        draw_box(panel, box, colours[label], scale)
      top, left = GAP + r * (ph + GAP), GAP + c * (pw + GAP)
      canvas[top:top + ph, left:left + pw] = panel
  drawn = np.unique(np.concatenate([truth[1][truth[2]], det[1][det[2]]]))
  legend = _legend(canvas.shape[1], [class_names[k - 1] for k in drawn], colours[drawn])
  return np.concatenate([canvas, legend])


def png(picture: np.ndarray) -> bytes:
  """uint8 (H, W, 3) picture -> PNG file bytes."""
  return png_bytes(Image.fromarray(picture))
