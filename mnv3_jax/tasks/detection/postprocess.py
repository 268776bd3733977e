"""SSD's head outputs -> detections: decode against the default boxes, clip to the image, softmax,
then per-class NMS (`nms.select`). Static shapes, jittable; vmap it over a batch."""
from typing import Sequence

import jax
import jax.numpy as jnp

from mnv3_jax.tasks.detection import box_coder
from mnv3_jax.tasks.detection import nms


def clip_to_image(boxes: jax.Array, image_size: Sequence[int]) -> jax.Array:
  """(..., 4) boxes clipped to [0, W] x [0, H] of an (H, W) image."""
  h, w = image_size
  return jnp.clip(boxes, 0, jnp.array([w, h, w, h], boxes.dtype))


def detections(box_regression: jax.Array, cls_logits: jax.Array, anchors: jax.Array,
               image_size: Sequence[int], **select_options) -> nms.Detections:
  """One image's detections from its raw head outputs, as torchvision's SSD postprocesses them.

  box_regression (A, 4) and cls_logits (A, C) of the default boxes `anchors` (A, 4) of an (H, W)
  input; select_options: those of `nms.select` (thresholds, candidates, max_detections). Boxes are
  in the input's pixels.
  """
  if len(image_size) != 2:
    raise ValueError(f'Invalid image_size {image_size!r}; allowed: (height, width).')
  boxes = clip_to_image(box_coder.decode(box_regression.astype(jnp.float32), anchors), image_size)
  scores = jax.nn.softmax(cls_logits.astype(jnp.float32), axis=-1)
  return nms.select(boxes, scores, **select_options)
