"""SSD default boxes (anchors) as torchvision's `DefaultBoxGenerator` makes them for SSDLite.

torchvision's `ssdlite320_mobilenet_v3_large` uses six feature maps (C4 at stride 16, C5 at 32, then
four stride-2 extra layers), aspect ratios [2, 3] on every map, scales spread linearly from
min_ratio 0.2 to max_ratio 0.95 (plus 1.0 for the last map's extra box) and clipped box sizes.
Per map k with scale s_k, each location has 2 + 2·len(ratios) boxes, in this order:
(s_k, s_k), (s'_k, s'_k) with s'_k = sqrt(s_k·s_{k+1}), then (s_k·√r, s_k/√r), (s_k/√r, s_k·√r) per
ratio r. Locations run row-major (y, then x) with centres ((i + 0.5)/W_k, (j + 0.5)/H_k); maps in
order. This is also the order of the SSDLite head's outputs.

Everything here is host-side NumPy: the boxes depend only on the (static) image size.
"""
import math
from typing import Optional, Sequence, Tuple

import numpy as np

ASPECT_RATIOS = ((2, 3),) * 6
MIN_RATIO, MAX_RATIO = 0.2, 0.95
FIRST_STRIDE = 16   # C4, the first map SSDLite predicts from; every later map halves it


def _check_size(image_size) -> Tuple[int, int]:
  if (not isinstance(image_size, (tuple, list)) or len(image_size) != 2 or
      not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1
              for v in image_size)):
    raise ValueError(f'Invalid image_size {image_size!r}; allowed: (height, width), integers >= 1.')
  return int(image_size[0]), int(image_size[1])


def feature_map_sizes(image_size: Sequence[int], num_maps: int = len(ASPECT_RATIOS),
                      first_stride: int = FIRST_STRIDE) -> Tuple[Tuple[int, int], ...]:
  """(H_k, W_k) of SSDLite's maps for an (H, W) input: ceil(H / (first_stride·2^k)).

  Every stride-2 layer of MobileNetV3 and of the extras maps n -> ceil(n / 2) (symmetric or TF
  SAME padding alike), and nested ceilings of halves are one ceiling of the product.
  """
  h, w = _check_size(image_size)
  if not isinstance(num_maps, int) or num_maps < 1:
    raise ValueError(f'Invalid num_maps {num_maps!r}; allowed: an integer >= 1.')
  return tuple((-(-h // (first_stride << k)), -(-w // (first_stride << k)))
               for k in range(num_maps))


def scales(num_maps: int, min_ratio: float = MIN_RATIO, max_ratio: float = MAX_RATIO):
  """The num_maps + 1 box scales (fractions of the image side): linear from min to max, then 1."""
  if not 0 < min_ratio <= max_ratio:
    raise ValueError(f'Invalid (min_ratio, max_ratio) {(min_ratio, max_ratio)!r}; allowed: '
                     '0 < min_ratio <= max_ratio.')
  if num_maps == 1:
    return [min_ratio, max_ratio]
  return [min_ratio + (max_ratio - min_ratio) * k / (num_maps - 1) for k in range(num_maps)] + [1.0]


def box_shapes(aspect_ratios: Sequence[Sequence[float]] = ASPECT_RATIOS,
               min_ratio: float = MIN_RATIO, max_ratio: float = MAX_RATIO,
               clip: bool = True) -> Tuple[np.ndarray, ...]:
  """Per map, the (P_k, 2) float64 (width, height) of its boxes as fractions of the image side;
  clip: limit them to [0, 1] (torchvision's default)."""
  if not aspect_ratios or any(r <= 0 for ratios in aspect_ratios for r in ratios):
    raise ValueError(f'Invalid aspect_ratios {aspect_ratios!r}; allowed: one list of ratios > 0 '
                     'per feature map, at least one map.')
  s = scales(len(aspect_ratios), min_ratio, max_ratio)
  shapes = []
  for k, ratios in enumerate(aspect_ratios):
    pairs = [(s[k], s[k]), (math.sqrt(s[k] * s[k + 1]),) * 2]
    for r in ratios:
      pairs += [(s[k] * math.sqrt(r), s[k] / math.sqrt(r)), (s[k] / math.sqrt(r), s[k] * math.sqrt(r))]
    shapes.append(np.clip(pairs, 0, 1) if clip else np.asarray(pairs))
  return tuple(shapes)


def boxes_per_location(aspect_ratios: Sequence[Sequence[float]] = ASPECT_RATIOS) -> Tuple[int, ...]:
  """Boxes at each location of each map: 2 + 2·len(ratios) (6 for SSDLite)."""
  return tuple(2 + 2 * len(r) for r in aspect_ratios)


def default_boxes(image_size: Sequence[int], aspect_ratios=ASPECT_RATIOS,
                  min_ratio: float = MIN_RATIO, max_ratio: float = MAX_RATIO, clip: bool = True,
                  map_sizes: Optional[Sequence[Tuple[int, int]]] = None) -> np.ndarray:
  """The (A, 4) float32 default boxes (x1, y1, x2, y2) in pixels of an (H, W) image.

  map_sizes: the (H_k, W_k) of the feature maps, one per entry of aspect_ratios; default
  `feature_map_sizes(image_size, len(aspect_ratios))`. A = sum_k H_k·W_k·(2 + 2·len(ratios_k)):
  3234 for SSDLite at 320x320.
  """
  h, w = _check_size(image_size)
  shapes = box_shapes(aspect_ratios, min_ratio, max_ratio, clip)
  if map_sizes is None:
    map_sizes = feature_map_sizes((h, w), len(aspect_ratios))
  if len(map_sizes) != len(shapes):
    raise ValueError(f'map_sizes {map_sizes!r} has {len(map_sizes)} maps; allowed: one per entry '
                     f'of aspect_ratios ({len(shapes)}).')
  out = []
  for (mh, mw), wh in zip(map_sizes, shapes):
    cy, cx = np.meshgrid((np.arange(mh) + 0.5) / mh, (np.arange(mw) + 0.5) / mw, indexing='ij')
    centres = np.stack([cx.ravel(), cy.ravel()], -1)[:, None, :]      # (H_k·W_k, 1, 2)
    half = 0.5 * wh[None, :, :]                                         # (1, P_k, 2)
    out.append(np.concatenate([centres - half, centres + half], -1).reshape(-1, 4))
  return (np.concatenate(out) * np.array([w, h, w, h])).astype(np.float32)
