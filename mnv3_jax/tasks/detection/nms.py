"""Non-maximum suppression with static shapes (jittable), plain and per class, and SSD's selection.

Inputs carry a `valid` mask instead of variable lengths; outputs are fixed-size with a valid mask.
Suppression is torchvision's: greedy in decreasing score, a box is dropped when its IoU with a kept
box is > iou_threshold. Equal scores keep the lower index first (a stable sort), so results are
deterministic where torchvision's order of ties is not.
"""
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from mnv3_jax.tasks.detection import box_coder


class Detections(NamedTuple):
  """Fixed-size detections of one image (add a leading batch axis under vmap): boxes (D, 4)
  (x1, y1, x2, y2) pixels, scores (D,), labels (D,) int32, valid (D,) bool; sorted by decreasing
  score, the invalid entries (scores -inf, labels -1) last."""
  boxes: jax.Array
  scores: jax.Array
  labels: jax.Array
  valid: jax.Array


def _check_threshold(name: str, value: float, low: float = 0.0):
  if not low <= value <= 1:
    raise ValueError(f'Invalid {name} {value!r}; allowed: a number in [{low}, 1].')


def nms(boxes: jax.Array, scores: jax.Array, iou_threshold: float,
        valid: Optional[jax.Array] = None) -> jax.Array:
  """Greedy NMS: (K, 4) boxes, (K,) scores, (K,) bool valid (default all) -> (K,) bool keep.

  Cost: a (K, K) IoU matrix and K sequential steps; meant for K up to a few thousand.
  """
  _check_threshold('iou_threshold', iou_threshold)
  scores = jnp.asarray(scores)
  valid = jnp.ones(scores.shape, bool) if valid is None else jnp.asarray(valid)
  order = jnp.argsort(-jnp.where(valid, scores, -jnp.inf), stable=True)
  overlaps = box_coder.box_iou(boxes[order], boxes[order]) > iou_threshold
  valid_sorted = valid[order]

  def step(i, keep):
    return keep.at[i].set(valid_sorted[i] & ~jnp.any(keep & overlaps[:, i]))

  keep_sorted = jax.lax.fori_loop(0, scores.shape[0], step, jnp.zeros(scores.shape, bool))
  return jnp.zeros(scores.shape, bool).at[order].set(keep_sorted)


def batched_nms(boxes: jax.Array, scores: jax.Array, labels: jax.Array, iou_threshold: float,
                valid: Optional[jax.Array] = None) -> jax.Array:
  """NMS within each label only, as torchvision's `batched_nms`: (K,) bool keep.

  Boxes of different labels are moved apart (label · (coordinate range + 1)) so they never overlap,
  then one `nms` runs over all of them.
  """
  valid = jnp.ones(scores.shape, bool) if valid is None else valid
  low = jnp.min(jnp.where(valid[:, None], boxes, jnp.inf))
  high = jnp.max(jnp.where(valid[:, None], boxes, -jnp.inf))
  span = jnp.where(jnp.any(valid), high - low + 1, 1.0)
  offsets = (labels.astype(boxes.dtype) * span)[:, None]
  return nms(boxes + offsets, scores, iou_threshold, valid)


def top_kept(boxes: jax.Array, scores: jax.Array, labels: jax.Array, keep: jax.Array,
             max_detections: int) -> Detections:
  """The max_detections highest-scoring kept entries of (K, ...) candidates, as `Detections`."""
  if not isinstance(max_detections, int) or max_detections < 1:
    raise ValueError(f'Invalid max_detections {max_detections!r}; allowed: an integer >= 1.')
  masked = jnp.where(keep, scores, -jnp.inf)
  if max_detections > masked.shape[0]:
    pad = max_detections - masked.shape[0]
    masked = jnp.concatenate([masked, jnp.full((pad,), -jnp.inf, masked.dtype)])
    boxes = jnp.concatenate([boxes, jnp.zeros((pad, 4), boxes.dtype)])
    labels = jnp.concatenate([labels, jnp.full((pad,), -1, labels.dtype)])
  top, index = jax.lax.top_k(masked, max_detections)
  valid = jnp.isfinite(top)
  return Detections(jnp.where(valid[:, None], boxes[index], 0), top,
                    jnp.where(valid, labels[index], -1).astype(jnp.int32), valid)


def select(boxes: jax.Array, class_scores: jax.Array, score_threshold: float = 0.001,
           iou_threshold: float = 0.55, candidates_per_class: int = 300,
           max_detections: int = 300) -> Detections:
  """SSD's detections of one image, as torchvision's `SSD.postprocess_detections` selects them.

  boxes (A, 4): decoded boxes; class_scores (A, C): probabilities, class 0 the background. Per
  class c >= 1: the boxes with score > score_threshold, at most candidates_per_class of them (the
  highest), NMS among themselves; then the max_detections best of all classes. Defaults: those of
  torchvision's ssdlite320_mobilenet_v3_large.
  """
  _check_threshold('score_threshold', score_threshold)
  if not isinstance(candidates_per_class, int) or candidates_per_class < 1:
    raise ValueError(f'Invalid candidates_per_class {candidates_per_class!r}; allowed: an '
                     'integer >= 1.')
  k = min(candidates_per_class, boxes.shape[0])
  per_class = class_scores[:, 1:].T                                     # (C - 1, A)
  top, index = jax.lax.top_k(jnp.where(per_class > score_threshold, per_class, -jnp.inf), k)
  valid = jnp.isfinite(top)
  candidates = boxes[index]                                             # (C - 1, k, 4)
  keep = jax.vmap(lambda b, s, v: nms(b, s, iou_threshold, v))(candidates, top, valid)
  labels = jnp.broadcast_to(jnp.arange(1, class_scores.shape[1])[:, None], top.shape)
  return top_kept(candidates.reshape(-1, 4), top.reshape(-1), labels.reshape(-1),
                  keep.reshape(-1), max_detections)
