"""NMS with static shapes against a NumPy greedy reference, and SSD's selection against torchvision's
postprocess_detections (with that reference standing in for torchvision's C++ nms)."""
import functools
import types

import jax
import numpy as np
import pytest
import torch

from mnv3_jax.tasks.detection import anchors as anchors_lib
from mnv3_jax.tasks.detection import nms
from mnv3_jax.tasks.detection import postprocess
from tests.tasks.detection import torchvision_detection as tv


def reference_nms(boxes, scores, threshold):
  """Indices kept by greedy NMS, by decreasing score (ties: lower index first)."""
  order, keep = list(np.argsort(-scores, kind='stable')), []
  iou = tv.box_ops.box_iou(torch.from_numpy(boxes), torch.from_numpy(boxes)).numpy()
  while order:
    i = order.pop(0)
    keep.append(i)
    order = [j for j in order if iou[i, j] <= threshold]
  return np.array(keep, np.int64)


def random_case(seed, n=60):
  rng = np.random.default_rng(seed)
  lo = rng.uniform(0, 80, (n, 2))
  boxes = np.concatenate([lo, lo + rng.uniform(5, 30, (n, 2))], 1).astype(np.float32)
  boxes[n // 2:n // 2 + 5] = boxes[:5]                      # duplicates: IoU exactly 1
  scores = rng.integers(0, 10, n).astype(np.float32) / 10   # many ties
  return boxes, scores


def as_mask(index, n):
  mask = np.zeros(n, bool)
  mask[index] = True
  return mask


@pytest.mark.parametrize('seed, threshold', [(0, 0.5), (1, 0.3), (2, 0.0), (3, 1.0)])
def test_nms_equals_reference(seed, threshold):
  boxes, scores = random_case(seed)
  valid = np.random.default_rng(seed).uniform(size=len(scores)) > 0.2
  got = np.asarray(jax.jit(nms.nms, static_argnums=2)(boxes, scores, threshold, valid))
  index = np.flatnonzero(valid)
  want = index[reference_nms(boxes[index], scores[index], threshold)]
  np.testing.assert_array_equal(got, as_mask(want, len(scores)))
  assert 0 < got.sum() < valid.sum() or threshold == 1.0


def test_nms_of_nothing():
  boxes, scores = random_case(0)
  assert not np.asarray(nms.nms(boxes, scores, 0.5, np.zeros(len(scores), bool))).any()


def test_batched_nms_is_nms_per_label():
  boxes, scores = random_case(4)
  labels = np.random.default_rng(4).integers(0, 3, len(scores))
  got = np.asarray(nms.batched_nms(boxes, scores, labels, 0.5))
  want = np.zeros(len(scores), bool)
  for label in range(3):
    index = np.flatnonzero(labels == label)
    want[index[reference_nms(boxes[index], scores[index], 0.5)]] = True
  np.testing.assert_array_equal(got, want)
  assert got.sum() > np.asarray(nms.nms(boxes, scores, 0.5)).sum()


def test_top_kept_pads_and_sorts():
  boxes = random_case(5)[0][:6]
  keep = np.array([1, 0, 1, 1, 0, 0], bool)
  scores = np.array([0.1, 0.9, 0.7, 0.3, 0.8, 0.2], np.float32)
  out = nms.top_kept(boxes, scores, np.arange(6), keep, 5)
  np.testing.assert_array_equal(out.labels, [2, 3, 0, -1, -1])
  np.testing.assert_array_equal(out.valid, [1, 1, 1, 0, 0])
  np.testing.assert_array_equal(out.boxes[:3], boxes[[2, 3, 0]])
  assert not np.asarray(out.boxes[3:]).any()


def torchvision_postprocess(regression, logits, anchors, image_size, **options):
  """torchvision's SSD.postprocess_detections with the reference NMS as its nms."""
  fake_ssd = types.SimpleNamespace(
      box_coder=tv.det_utils.BoxCoder((10.0, 10.0, 5.0, 5.0)), score_thresh=options['score_threshold'],
      nms_thresh=options['iou_threshold'], topk_candidates=options['candidates_per_class'],
      detections_per_img=options['max_detections'])

  def torch_nms(boxes, scores, threshold):
    return torch.from_numpy(reference_nms(boxes.numpy(), scores.numpy(), threshold))

  original, tv.box_ops.nms = tv.box_ops.nms, torch_nms
  try:
    out = tv.ssd.SSD.postprocess_detections(
        fake_ssd, {'bbox_regression': torch.from_numpy(regression[None]),
                   'cls_logits': torch.from_numpy(logits[None])},
        [torch.from_numpy(anchors)], [image_size])[0]
  finally:
    tv.box_ops.nms = original
  return {k: v.numpy() for k, v in out.items()}


@pytest.mark.parametrize('options', [
    dict(score_threshold=0.001, iou_threshold=0.55, candidates_per_class=300, max_detections=300),
    dict(score_threshold=0.2, iou_threshold=0.3, candidates_per_class=20, max_detections=15),
    dict(score_threshold=0.6, iou_threshold=0.5, candidates_per_class=300, max_detections=300),
])
def test_postprocess_equals_torchvision(options):
  image_size = (64, 96)
  anchors = anchors_lib.default_boxes(image_size)
  rng = np.random.default_rng(6)
  regression = rng.normal(0, 1, (len(anchors), 4)).astype(np.float32)
  logits = rng.normal(0, 2, (len(anchors), 5)).astype(np.float32)
  want = torchvision_postprocess(regression, logits, anchors, image_size, **options)
  run = jax.jit(functools.partial(postprocess.detections, image_size=image_size, **options))
  got = run(regression, logits, anchors)
  n = len(want['scores'])
  assert 0 < n and int(got.valid.sum()) == n and not np.asarray(got.valid[n:]).any()
  np.testing.assert_allclose(got.scores[:n], want['scores'], rtol=1e-5)
  np.testing.assert_array_equal(got.labels[:n], want['labels'])
  np.testing.assert_allclose(got.boxes[:n], want['boxes'], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize('call, match', [
    (lambda b, s: nms.nms(b, s, 1.5), r'Invalid iou_threshold 1.5'),
    (lambda b, s: nms.top_kept(b, s, s, s > 0, 0), r'Invalid max_detections 0'),
    (lambda b, s: nms.select(b, s[:, None], candidates_per_class=0),
     r'Invalid candidates_per_class 0'),
    (lambda b, s: nms.select(b, s[:, None], score_threshold=-1), r'Invalid score_threshold -1'),
])
def test_bad_input(call, match):
  boxes, scores = random_case(0)
  with pytest.raises(ValueError, match=match):
    call(boxes, scores)
