"""COCO mAP from padded arrays: a perfect detector, and a shifted one against pycocotools run
directly on the same boxes through its json-like API (loadRes)."""
import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mnv3_jax.tasks.detection import coco_eval


def ground_truths(seed=0, n=4, g=6):
  """Padded ground truths of every size class (COCO: small < 32², medium < 96², large)."""
  rng = np.random.default_rng(seed)
  lo = rng.uniform(0, 200, (n, g, 2))
  sides = rng.choice([12.0, 50.0, 150.0], (n, g, 1)) * rng.uniform(0.8, 1.2, (n, g, 2))
  boxes = np.concatenate([lo, lo + sides], -1).astype(np.float32)
  labels = rng.integers(1, 4, (n, g))
  valid = np.arange(g)[None] < rng.integers(2, g + 1, (n, 1))
  return boxes, labels, valid


def test_perfect_detector():
  boxes, labels, valid = ground_truths()
  stats = coco_eval.coco_map(boxes, np.ones(labels.shape), labels, valid, boxes, labels, valid)
  assert set(stats) == set(coco_eval.STATS)
  for name in ('AP', 'AP50', 'AP75', 'AP_small', 'AP_medium', 'AP_large', 'AR100'):
    assert stats[name] == pytest.approx(1.0), name


def direct_pycocotools(det, gt_boxes, gt_labels, gt_valid):
  """pycocotools as its docs use it: a GT dataset dict, detections as a list for loadRes."""
  annotations, results = [], []
  for i, k in zip(*np.nonzero(gt_valid)):
    x1, y1, x2, y2 = map(float, gt_boxes[i, k])
    annotations.append({'id': len(annotations) + 1, 'image_id': int(i) + 10,
                        'category_id': int(gt_labels[i, k]), 'iscrowd': 0,
                        'bbox': [x1, y1, x2 - x1, y2 - y1], 'area': (x2 - x1) * (y2 - y1)})
  for i, k in zip(*np.nonzero(det['valid'])):
    x1, y1, x2, y2 = map(float, det['boxes'][i, k])
    results.append({'image_id': int(i) + 10, 'category_id': int(det['labels'][i, k]),
                    'bbox': [x1, y1, x2 - x1, y2 - y1], 'score': float(det['scores'][i, k])})
  gt = COCO()
  gt.dataset = {'images': [{'id': i + 10} for i in range(len(gt_boxes))],
                'categories': [{'id': c} for c in range(1, 4)], 'annotations': annotations}
  with contextlib.redirect_stdout(io.StringIO()):
    gt.createIndex()
    evaluator = COCOeval(gt, gt.loadRes(results), 'bbox')
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
  return evaluator.stats


def test_shifted_detector_equals_pycocotools_directly():
  gt_boxes, gt_labels, gt_valid = ground_truths(1)
  rng = np.random.default_rng(2)
  shift = rng.uniform(-6, 6, gt_boxes.shape).astype(np.float32)
  false = rng.uniform(0, 200, gt_boxes.shape[:2] + (2,))
  det = {'boxes': np.concatenate([gt_boxes + shift, np.concatenate([false, false + 40], -1)], 1),
         'scores': rng.uniform(0, 1, (len(gt_boxes), 2 * gt_boxes.shape[1])),
         'labels': np.concatenate([gt_labels, rng.integers(1, 4, gt_labels.shape)], 1),
         'valid': np.concatenate([gt_valid, rng.uniform(size=gt_valid.shape) < 0.5], 1)}
  stats = coco_eval.coco_map(det['boxes'], det['scores'], det['labels'], det['valid'], gt_boxes,
                             gt_labels, gt_valid)
  want = direct_pycocotools(det, gt_boxes, gt_labels, gt_valid)
  np.testing.assert_allclose([stats[k] for k in coco_eval.STATS], want, rtol=1e-12)
  assert 0.1 < stats['AP'] < 0.9 and stats['AP50'] > stats['AP75']


def test_no_detections_and_crowds():
  boxes, labels, valid = ground_truths(3)
  none = np.zeros(labels.shape, bool)
  assert coco_eval.coco_map(boxes, np.ones(labels.shape), labels, none, boxes, labels,
                            valid)['AP'] == 0.0
  # Detections only of crowd ground truths: nothing is missed, nothing is detected.
  crowd = coco_eval.coco_map(boxes, np.ones(labels.shape), labels, valid, boxes, labels, valid,
                             gt_crowd=np.ones(labels.shape, bool))
  assert crowd['AP'] == -1.0


def test_bad_shapes():
  boxes, labels, valid = ground_truths()
  with pytest.raises(ValueError, match=r'det_scores has shape \(4, 5\); allowed: \(4, 6\)'):
    coco_eval.coco_map(boxes, np.ones((4, 5)), labels, valid, boxes, labels, valid)
  with pytest.raises(ValueError, match=r'gt_boxes has shape \(3, 6, 4\); allowed: \(4, \?, 4\)'):
    coco_eval.coco_map(boxes, np.ones(labels.shape), labels, valid, boxes[:3], labels, valid)
