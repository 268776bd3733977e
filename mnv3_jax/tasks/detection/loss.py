"""The SSD training loss on padded ground truths (fixed G boxes per image, a valid mask): jittable.

What it computes, and why — torchvision's `SSD.compute_loss`, the loss its SSDLite320 weights were
trained with, so that the two can be compared number for number:
- Matching: `box_coder.match` (torchvision's SSDMatcher: IoU >= 0.5, and every ground truth keeps
  its best default box).
- Boxes: smooth-L1 with beta 1 (the SSD paper's loss; torchvision's `smooth_l1_loss` default) of
  the raw regressions against `box_coder.encode` targets (weights 10, 10, 5, 5), summed over the
  matched default boxes and their 4 coordinates.
- Classes: softmax cross-entropy with hard-negative mining: every matched box (label > 0) plus,
  per image, the 3·(its matched boxes) unmatched boxes of highest loss (background target 0).
  torchvision lets matched boxes fill the negatives' quota once an image has fewer than 3x as many
  unmatched boxes, counting them twice; here the quota is taken from unmatched boxes only (the
  two agree whenever the quota fits, which it does at any real size: 3234 default boxes at 320).
- Both sums are divided by the number of matched boxes in the whole batch (at least 1), as
  torchvision does. Under `jax.jit` over a sharded batch that is the global count (torchvision's
  DDP training normalises per replica); inside a shard_map over `axis_name` (per-device BatchNorm)
  the count is summed over the axis too, and each device returns its share times the number of
  devices, so that the mean over the axis is the global batch's loss.
Labels of ground truths are 1..C-1 (0 is the background).
"""
from typing import Dict, Optional

import jax
import jax.numpy as jnp

from mnv3_jax.tasks.detection import box_coder

NEGATIVES_PER_POSITIVE = 3.0   # torchvision: (1 - positive_fraction) / positive_fraction, 0.25


def smooth_l1(x: jax.Array, beta: float = 1.0) -> jax.Array:
  """Elementwise smooth-L1 (Huber / beta): 0.5·x²/beta where |x| < beta, else |x| - 0.5·beta."""
  ax = jnp.abs(x)
  return jnp.where(ax < beta, 0.5 * x * x / beta, ax - 0.5 * beta)


def _rank_descending(values: jax.Array) -> jax.Array:
  """(N, A) -> (N, A) int: each entry's position when its row is sorted in decreasing order."""
  order = jnp.argsort(-values, axis=-1, stable=True)
  return jnp.argsort(order, axis=-1)


def ssd_loss(box_regression: jax.Array, cls_logits: jax.Array, gt_boxes: jax.Array,
             gt_labels: jax.Array, gt_valid: jax.Array, anchors: jax.Array,
             iou_threshold: float = box_coder.IOU_THRESHOLD,
             negatives_per_positive: float = NEGATIVES_PER_POSITIVE,
             axis_name: Optional[str] = None) -> Dict[str, jax.Array]:
  """SSD's box and class losses of a batch (see the module docstring).

  box_regression (N, A, 4), cls_logits (N, A, C): raw head outputs for the default boxes
  `anchors` (A, 4, pixels x1 y1 x2 y2); gt_boxes (N, G, 4) in the same pixels, gt_labels (N, G)
  int in 1..C-1, gt_valid (N, G) bool (False: padding). Returns {'bbox_regression',
  'classification'}: float32 scalars, their sum is the training loss. axis_name: see the module
  docstring (None: the arrays are the whole batch).
  """
  if negatives_per_positive < 0:
    raise ValueError(f'Invalid negatives_per_positive {negatives_per_positive!r}; allowed: a '
                     'number >= 0.')
  n, a = cls_logits.shape[:2]
  if box_regression.shape != (n, a, 4) or anchors.shape != (a, 4) or gt_boxes.shape[-1] != 4:
    raise ValueError(f'Shapes box_regression {box_regression.shape}, cls_logits '
                     f'{cls_logits.shape}, anchors {anchors.shape}, gt_boxes {gt_boxes.shape} do '
                     'not fit; allowed: (N, A, 4), (N, A, C), (A, 4), (N, G, 4).')
  matches = jax.vmap(box_coder.match, (0, 0, None, None))(gt_boxes, gt_valid, anchors,
                                                          iou_threshold)     # (N, A)
  matched = matches >= 0
  index = jnp.maximum(matches, 0)
  boxes = jnp.take_along_axis(gt_boxes, index[..., None], axis=1)           # (N, A, 4)
  boxes = jnp.where(matched[..., None], boxes, anchors)    # encodable everywhere: no NaN grads
  targets = jax.lax.stop_gradient(box_coder.encode(boxes, anchors))
  box_terms = smooth_l1(box_regression.astype(jnp.float32) - targets)
  box_loss = jnp.sum(jnp.where(matched[..., None], box_terms, 0))

  labels = jnp.where(matched, jnp.take_along_axis(gt_labels, index, axis=1), 0)
  logits = cls_logits.astype(jnp.float32)
  ce = jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(
      logits, labels[..., None], axis=-1)[..., 0]                           # (N, A)
  foreground = labels > 0
  quota = negatives_per_positive * jnp.sum(foreground, axis=1, keepdims=True)
  rank = _rank_descending(jax.lax.stop_gradient(jnp.where(foreground, -jnp.inf, ce)))
  hard_negative = ~foreground & (rank < quota)
  cls_loss = jnp.sum(jnp.where(foreground | hard_negative, ce, 0))
  count = jnp.sum(matched).astype(jnp.float32)
  devices = 1.0
  if axis_name is not None:
    count, devices = jax.lax.psum(count, axis_name), jax.lax.psum(1.0, axis_name)
  count = jnp.maximum(count, 1.0)
  return {'bbox_regression': box_loss * devices / count,
          'classification': cls_loss * devices / count}
