"""COCO box mAP (pycocotools' COCOeval) of gathered detections, all in memory.

Detections and ground truths come as the padded arrays the jitted steps produce (fixed counts
with valid masks, boxes (x1, y1, x2, y2) in pixels); they become COCO datasets in memory (no
files): image ids 1..N, annotation ids from 1, boxes as (x, y, w, h). A ground truth's area is
its box area (COCO's own annotations give the mask area), a detection's too (as pycocotools'
`loadRes` sets it). Categories are the labels that occur; classes without ground truth do not
count towards the means (pycocotools' rule). COCOeval keeps at most 100 detections per image.
"""
import contextlib
import io
from typing import Dict, Optional

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

STATS = ('AP', 'AP50', 'AP75', 'AP_small', 'AP_medium', 'AP_large',
         'AR1', 'AR10', 'AR100', 'AR_small', 'AR_medium', 'AR_large')


def _check(name: str, value: np.ndarray, shape) -> np.ndarray:
  value = np.asarray(value)
  if value.ndim != len(shape) or any(s is not None and s != v for s, v in zip(shape, value.shape)):
    want = ', '.join('?' if s is None else str(s) for s in shape)
    raise ValueError(f'{name} has shape {value.shape}; allowed: ({want}).')
  return value


def _annotations(boxes, labels, valid, scores=None):
  """COCO annotation dicts of the valid entries of (N, K, ...) arrays; ids from 1."""
  out = []
  for image, k in zip(*np.nonzero(valid)):
    x1, y1, x2, y2 = (float(v) for v in boxes[image, k])
    ann = {'id': len(out) + 1, 'image_id': int(image) + 1, 'category_id': int(labels[image, k]),
           'bbox': [x1, y1, x2 - x1, y2 - y1], 'area': (x2 - x1) * (y2 - y1), 'iscrowd': 0}
    if scores is not None:
      ann['score'] = float(scores[image, k])
    out.append(ann)
  return out


def _dataset(images: int, categories, annotations) -> COCO:
  coco = COCO()
  coco.dataset = {'images': [{'id': i + 1} for i in range(images)],
                  'categories': [{'id': c} for c in categories], 'annotations': annotations}
  with contextlib.redirect_stdout(io.StringIO()):
    coco.createIndex()
  return coco


def coco_map(det_boxes, det_scores, det_labels, det_valid, gt_boxes, gt_labels, gt_valid,
             gt_crowd: Optional[np.ndarray] = None) -> Dict[str, float]:
  """COCO's 12 box statistics (`STATS`: AP at IoU .50:.95, AP50, ..., AR_large).

  det_boxes (N, D, 4), det_scores (N, D), det_labels (N, D) int, det_valid (N, D) bool;
  gt_boxes (N, G, 4), gt_labels (N, G) int, gt_valid (N, G) bool, gt_crowd (N, G) bool or None
  (COCO's iscrowd: such ground truths neither count as misses nor make detections false).
  Returns name -> value in [0, 1], or -1 where no ground truth falls in that area range.
  """
  det_boxes = _check('det_boxes', det_boxes, (None, None, 4))
  n, d = det_boxes.shape[:2]
  det_scores, det_labels, det_valid = (_check(name, v, (n, d)) for name, v in (
      ('det_scores', det_scores), ('det_labels', det_labels), ('det_valid', det_valid)))
  gt_boxes = _check('gt_boxes', gt_boxes, (n, None, 4))
  g = gt_boxes.shape[1]
  gt_labels, gt_valid = (_check(name, v, (n, g)) for name, v in (
      ('gt_labels', gt_labels), ('gt_valid', gt_valid)))
  det_valid, gt_valid = det_valid.astype(bool), gt_valid.astype(bool)
  gts = _annotations(gt_boxes, gt_labels, gt_valid)
  if gt_crowd is not None:
    crowd = _check('gt_crowd', gt_crowd, (n, g))[gt_valid]
    for ann, is_crowd in zip(gts, crowd):
      ann['iscrowd'] = int(is_crowd)
  categories = sorted({int(c) for c in gt_labels[gt_valid]} | {int(c) for c in
                                                               det_labels[det_valid]})
  gt = _dataset(n, categories, gts)
  dt = _dataset(n, categories, _annotations(det_boxes, det_labels, det_valid, det_scores))
  evaluator = COCOeval(gt, dt, 'bbox')
  with contextlib.redirect_stdout(io.StringIO()):
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
  return dict(zip(STATS, (float(v) for v in evaluator.stats)))
