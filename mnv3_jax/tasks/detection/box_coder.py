"""Boxes against default boxes: IoU, SSD's encode/decode and the ground-truth matching.

Boxes are (x1, y1, x2, y2) in pixels, float32. The coding is torchvision's `BoxCoder` with SSD's
weights (10, 10, 5, 5): (dx, dy, dw, dh) = (10·Δcx / w_a, 10·Δcy / h_a, 5·log(w / w_a),
5·log(h / h_a)). Matching is torchvision's `SSDMatcher` (threshold 0.5). Ground truths are padded
to a fixed count G per image with a valid mask, so everything here is jittable.
"""
import math
from typing import Sequence

import jax
import jax.numpy as jnp

WEIGHTS = (10.0, 10.0, 5.0, 5.0)
LOG_SCALE_CLIP = math.log(1000.0 / 16)   # torchvision's bbox_xform_clip: exp() stays finite
IOU_THRESHOLD = 0.5


def _centre_size(boxes: jax.Array):
  w, h = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
  return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


def box_area(boxes: jax.Array) -> jax.Array:
  """(..., 4) boxes -> (...) areas (negative sizes count as 0)."""
  return (jnp.maximum(boxes[..., 2] - boxes[..., 0], 0) *
          jnp.maximum(boxes[..., 3] - boxes[..., 1], 0))


def box_iou(a: jax.Array, b: jax.Array) -> jax.Array:
  """IoU of every pair: (M, 4), (K, 4) -> (M, K); 0 where the union is empty."""
  lo = jnp.maximum(a[:, None, :2], b[None, :, :2])
  hi = jnp.minimum(a[:, None, 2:], b[None, :, 2:])
  inter = jnp.prod(jnp.maximum(hi - lo, 0), axis=-1)
  union = box_area(a)[:, None] + box_area(b)[None, :] - inter
  return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1), 0)


def _check_weights(weights: Sequence[float]):
  if len(weights) != 4 or not all(w > 0 for w in weights):
    raise ValueError(f'Invalid weights {weights!r}; allowed: four numbers > 0 (wx, wy, ww, wh).')


def encode(boxes: jax.Array, anchors: jax.Array, weights: Sequence[float] = WEIGHTS) -> jax.Array:
  """(..., 4) boxes relative to (..., 4) anchors (broadcast) -> (..., 4) regression targets.

  Boxes and anchors need positive width and height (log of the ratio).
  """
  _check_weights(weights)
  x, y, w, h = _centre_size(boxes)
  ax, ay, aw, ah = _centre_size(anchors)
  wx, wy, ww, wh = weights
  return jnp.stack([wx * (x - ax) / aw, wy * (y - ay) / ah,
                    ww * jnp.log(w / aw), wh * jnp.log(h / ah)], axis=-1)


def decode(codes: jax.Array, anchors: jax.Array, weights: Sequence[float] = WEIGHTS) -> jax.Array:
  """(..., 4) regressions relative to (..., 4) anchors -> (..., 4) boxes; inverse of `encode`.

  The log-size terms are capped at log(1000/16), as torchvision does.
  """
  _check_weights(weights)
  ax, ay, aw, ah = _centre_size(anchors)
  wx, wy, ww, wh = weights
  x = codes[..., 0] / wx * aw + ax
  y = codes[..., 1] / wy * ah + ay
  w = jnp.exp(jnp.minimum(codes[..., 2] / ww, LOG_SCALE_CLIP)) * aw
  h = jnp.exp(jnp.minimum(codes[..., 3] / wh, LOG_SCALE_CLIP)) * ah
  return jnp.stack([x - 0.5 * w, y - 0.5 * h, x + 0.5 * w, y + 0.5 * h], axis=-1)


def match(gt_boxes: jax.Array, gt_valid: jax.Array, anchors: jax.Array,
          threshold: float = IOU_THRESHOLD) -> jax.Array:
  """The ground truth each anchor is matched to: (A,) int32 index into G, or -1 (background).

  gt_boxes (G, 4), gt_valid (G,) bool (padding rows False), anchors (A, 4). As torchvision's
  SSDMatcher: each anchor takes the ground truth of highest IoU if that IoU >= threshold; then each
  valid ground truth claims its best anchor (the first of ties) whatever the IoU, the later ground
  truth winning an anchor two of them claim. No valid ground truth: all -1.
  """
  if not 0 <= threshold <= 1:
    raise ValueError(f'Invalid threshold {threshold!r}; allowed: an IoU in [0, 1].')
  iou = jnp.where(gt_valid[:, None], box_iou(gt_boxes, anchors), -1.0)    # (G, A)
  best_gt = jnp.argmax(iou, axis=0)
  matches = jnp.where(jnp.max(iou, axis=0) >= threshold, best_gt, -1)
  best_anchor = jnp.argmax(iou, axis=1)                                   # (G,)
  gt_index = jnp.where(gt_valid, jnp.arange(gt_boxes.shape[0]), -1)
  claimed = jnp.full(anchors.shape[:1], -1, jnp.int32).at[best_anchor].max(gt_index)
  return jnp.where(claimed >= 0, claimed, matches).astype(jnp.int32)
