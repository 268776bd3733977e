"""The pure, jittable pieces a trainer needs for detection: the loss with its parts as metrics, and
the detections of an eval batch.

Both take the model's raw outputs `(box_regression (N, A, 4), cls_logits (N, A, C))` (what
`ssdlite.SSDLiteMobileNetV3` returns) and a batch of data.py's layout (`boxes` (N, G, 4) pixels of
the input, `labels` (N, G), `valid` (N, G)). Under `jax.jit` with the batch sharded over a mesh's
'data' axis they compute the same as on one device: the loss normalises by the batch's global
number of matched default boxes (loss.py), and detections are per image.

The default boxes depend only on the static input size: by default those of SSDLite's standard
aspect ratios (`anchors.default_boxes`), built on the host at trace time; a model with other
aspect ratios passes `model.default_boxes(size)`.
"""
from typing import Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from mnv3_jax.tasks.detection import anchors
from mnv3_jax.tasks.detection import loss
from mnv3_jax.tasks.detection import nms
from mnv3_jax.tasks.detection import postprocess

# Detections kept per image for evaluation: COCOeval scores at most 100 per image.
MAX_DETECTIONS = 100


def _default_boxes(default_boxes, image_size: Sequence[int], num_boxes: int) -> jax.Array:
  boxes = anchors.default_boxes(tuple(image_size)) if default_boxes is None else default_boxes
  if np.shape(boxes) != (num_boxes, 4):
    raise ValueError(f'default_boxes of shape {np.shape(boxes)} do not fit the model outputs of '
                     f'{num_boxes} boxes for a {tuple(image_size)} input; allowed: ({num_boxes}, '
                     '4), e.g. model.default_boxes(image_size).')
  return jnp.asarray(boxes, jnp.float32)


def loss_and_metrics(model_outputs: Tuple[jax.Array, jax.Array], batch: Dict[str, jax.Array],
                     default_boxes: Optional[np.ndarray] = None,
                     **loss_options) -> Tuple[jax.Array, Dict[str, jax.Array]]:
  """(loss, metrics) of a training batch: SSD's loss (loss.ssd_loss) and its parts.

  batch: 'image' (N, H, W, 3) (only its static size is read), 'boxes', 'labels', 'valid';
  loss_options: those of `loss.ssd_loss` (iou_threshold, negatives_per_positive, axis_name: the
  shard_map axis when `batch` is one device's shard).
  metrics: float32 scalars {'loss', 'bbox_regression', 'classification'}; loss is their sum.
  """
  box_regression, cls_logits = model_outputs
  boxes = _default_boxes(default_boxes, batch['image'].shape[1:3], box_regression.shape[1])
  parts = loss.ssd_loss(box_regression, cls_logits, batch['boxes'], batch['labels'],
                        batch['valid'], boxes, **loss_options)
  total = parts['bbox_regression'] + parts['classification']
  return total, {'loss': total, **parts}


def detect(model_outputs: Tuple[jax.Array, jax.Array], image_size: Sequence[int],
           default_boxes: Optional[np.ndarray] = None, max_detections: int = MAX_DETECTIONS,
           **select_options) -> nms.Detections:
  """Batched detections (boxes (N, D, 4) in pixels of the (H, W) input, scores, labels, valid;
  D = max_detections) from raw outputs, as torchvision's SSD postprocesses them (postprocess.py);
  select_options: `nms.select`'s thresholds and candidates_per_class. Jittable (static options)."""
  box_regression, cls_logits = model_outputs
  boxes = _default_boxes(default_boxes, image_size, box_regression.shape[1])
  one = lambda b, c: postprocess.detections(b, c, boxes, tuple(image_size),
                                            max_detections=max_detections, **select_options)
  return jax.vmap(one)(box_regression, cls_logits)
