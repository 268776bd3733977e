"""Box coding and matching: round trips, torchvision's coder and SSDMatcher, a NumPy reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from mnv3_jax.tasks.detection import anchors as anchors_lib
from mnv3_jax.tasks.detection import box_coder
from tests.tasks.detection import torchvision_detection as tv

ANCHORS = anchors_lib.default_boxes((64, 96))      # (A, 4), A = 6·(4·6 + 2·3 + 1·2 + 1·1·3)


def random_boxes(rng, n, size=(64, 96), min_side=2.0):
  """n boxes inside an (H, W) image, sides >= min_side."""
  h, w = size
  lo = rng.uniform(0, 1, (n, 2)) * [w - min_side, h - min_side]
  hi = lo + min_side + rng.uniform(0, 1, (n, 2)) * ([w, h] - lo - min_side)
  return np.concatenate([lo, hi], -1).astype(np.float32)


def test_encode_decode_round_trip_and_torchvision():
  rng = np.random.default_rng(0)
  boxes = random_boxes(rng, len(ANCHORS))
  codes = np.asarray(box_coder.encode(boxes, ANCHORS))
  np.testing.assert_allclose(box_coder.decode(codes, ANCHORS), boxes, atol=2e-4)
  coder = tv.det_utils.BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
  want = coder.encode_single(torch.from_numpy(boxes), torch.from_numpy(ANCHORS)).numpy()
  np.testing.assert_allclose(codes, want, rtol=1e-5, atol=1e-5)
  regressions = rng.normal(0, 3, codes.shape).astype(np.float32)
  regressions[:5, 2:] = 60.0     # beyond the log-size cap
  want = coder.decode_single(torch.from_numpy(regressions), torch.from_numpy(ANCHORS)).numpy()
  got = np.asarray(box_coder.decode(regressions, ANCHORS))
  assert np.isfinite(got).all()
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)


def test_iou():
  a = np.array([[0, 0, 10, 10], [0, 0, 0, 0]], np.float32)
  b = np.array([[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 0, 0]], np.float32)
  np.testing.assert_allclose(box_coder.box_iou(a, b), [[1 / 3, 0, 0], [0, 0, 0]], atol=1e-7)


def reference_match(gt, valid, anchors, threshold=0.5):
  """torchvision's SSDMatcher, step by step, on the valid ground truths."""
  idx = np.flatnonzero(valid)
  if not len(idx):
    return np.full(len(anchors), -1)
  iou = tv.box_ops.box_iou(torch.from_numpy(gt[idx]), torch.from_numpy(anchors)).numpy()
  matches = np.where(iou.max(0) >= threshold, iou.argmax(0), -1)
  for g, a in enumerate(iou.argmax(1)):
    matches[a] = g
  return np.where(matches >= 0, idx[np.maximum(matches, 0)], -1)


@pytest.mark.parametrize('seed', range(4))
def test_match_equals_reference(seed):
  rng = np.random.default_rng(seed)
  gt = random_boxes(rng, 7, min_side=4)
  inside = np.flatnonzero((ANCHORS[:, :2] >= 0).all(1) & (ANCHORS[:, 2:] <= [96, 64]).all(1))
  gt[:4] = ANCHORS[rng.choice(inside, 4)] + rng.uniform(-1, 1, (4, 4))   # matched above 0.5
  gt[2] = gt[5]                     # two ground truths claim the same anchor: the later one wins
  gt[6] = [40, 30, 41, 31]          # tiny: below the threshold everywhere, but claims its best
  valid = np.array([1, 1, 1, 0, 1, 1, 1], bool) if seed % 2 else np.ones(7, bool)
  got = np.asarray(jax.jit(box_coder.match)(gt, valid, ANCHORS))
  want = reference_match(gt, valid, ANCHORS)
  np.testing.assert_array_equal(got, want)
  assert (got >= 0).sum() > valid.sum() and (valid[3] or 3 not in got)
  assert got[np.argmax(np.asarray(box_coder.box_iou(gt[5:6], ANCHORS)))] == 5
  if seed == 0:   # torchvision's own matcher agrees where no ground truth is padding
    matcher = tv.det_utils.SSDMatcher(0.5)
    np.testing.assert_array_equal(
        got, matcher(tv.box_ops.box_iou(torch.from_numpy(gt), torch.from_numpy(ANCHORS))).numpy())


def test_match_without_ground_truth():
  got = box_coder.match(jnp.zeros((3, 4)), jnp.zeros(3, bool), ANCHORS)
  assert (np.asarray(got) == -1).all()


def test_bad_input():
  with pytest.raises(ValueError, match=r'Invalid weights \(1, 1, 0, 1\)'):
    box_coder.encode(ANCHORS, ANCHORS, weights=(1, 1, 0, 1))
  with pytest.raises(ValueError, match=r'Invalid threshold 1.5'):
    box_coder.match(ANCHORS[:2], np.ones(2, bool), ANCHORS, threshold=1.5)
