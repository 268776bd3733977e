"""The SSD loss against torchvision's SSD.compute_loss (with its SSDMatcher) on small random inputs."""
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from mnv3_jax.tasks.detection import anchors as anchors_lib
from mnv3_jax.tasks.detection import loss
from tests.tasks.detection import torchvision_detection as tv

ANCHORS = anchors_lib.default_boxes((64, 96))   # 210 default boxes
CLASSES = 5


def batch(seed, counts=(3, 0, 4), max_boxes=4):
  """Random head outputs and padded ground truths; some boxes near default boxes (IoU > 0.5)."""
  rng = np.random.default_rng(seed)
  n = len(counts)
  regression = rng.normal(0, 2, (n, len(ANCHORS), 4)).astype(np.float32)
  logits = rng.normal(0, 2, (n, len(ANCHORS), CLASSES)).astype(np.float32)
  lo = rng.uniform(0, 50, (n, max_boxes, 2))
  boxes = np.concatenate([lo, lo + rng.uniform(4, 40, (n, max_boxes, 2))], -1).astype(np.float32)
  boxes[:, 0] = ANCHORS[rng.integers(0, 24 * 6, n)] + rng.uniform(-1, 1, (n, 4))
  labels = rng.integers(1, CLASSES, (n, max_boxes))
  valid = np.arange(max_boxes)[None, :] < np.array(counts)[:, None]
  return regression, logits, boxes, labels, valid


def torchvision_loss(regression, logits, boxes, labels, valid):
  fake_ssd = types.SimpleNamespace(box_coder=tv.det_utils.BoxCoder((10.0, 10.0, 5.0, 5.0)),
                                   neg_to_pos_ratio=3.0)
  matcher, anchors = tv.det_utils.SSDMatcher(0.5), torch.from_numpy(ANCHORS)
  targets, matched = [], []
  for b, l, v in zip(boxes, labels, valid):
    targets.append({'boxes': torch.from_numpy(b[v]), 'labels': torch.from_numpy(l[v])})
    matched.append(matcher(tv.box_ops.box_iou(targets[-1]['boxes'], anchors)) if v.any()
                   else torch.full((len(ANCHORS),), -1, dtype=torch.int64))
  out = tv.ssd.SSD.compute_loss(
      fake_ssd, targets, {'bbox_regression': torch.from_numpy(regression),
                          'cls_logits': torch.from_numpy(logits)}, [anchors] * len(boxes), matched)
  return {k: float(v) for k, v in out.items()}


@pytest.mark.parametrize('seed, counts', [(0, (3, 0, 4)), (1, (1, 2, 4)), (2, (0, 0, 0))])
def test_equals_torchvision(seed, counts):
  inputs = batch(seed, counts)
  got = jax.jit(loss.ssd_loss)(*inputs, ANCHORS)
  want = torchvision_loss(*inputs)
  for key in want:
    np.testing.assert_allclose(float(got[key]), want[key], rtol=1e-5)
  assert (want['bbox_regression'] > 0) == (sum(counts) > 0)


def test_negatives_are_the_hardest_three_per_positive():
  regression, logits, boxes, labels, valid = batch(3, (1, 0, 0))
  ssd_loss = jax.jit(loss.ssd_loss, static_argnames='negatives_per_positive')
  out = ssd_loss(regression, logits, boxes, labels, valid, ANCHORS)
  more = ssd_loss(regression, logits, boxes, labels, valid, ANCHORS, negatives_per_positive=4.0)
  assert float(more['classification']) > float(out['classification'])
  # Raising an easy negative's loss past the hardest ones changes the loss; an easier one does not.
  ce = np.asarray(jax.nn.logsumexp(logits[0], -1) - logits[0][:, 0])
  easiest = int(np.argmin(ce))
  harder, easier = logits.copy(), logits.copy()
  harder[0, easiest, 1] += 100.0
  easier[0, easiest, 0] += 1.0
  assert float(ssd_loss(regression, harder, boxes, labels, valid, ANCHORS)['classification']
               ) > float(out['classification']) + 10
  assert float(ssd_loss(regression, easier, boxes, labels, valid, ANCHORS)['classification']
               ) == float(out['classification'])


def test_gradients_are_finite_with_padding():
  regression, logits, boxes, labels, valid = batch(4, (2, 0, 1))
  boxes[~valid] = 0.0     # padded rows: empty boxes, log(0) if they were encoded
  total = lambda r, c: sum(loss.ssd_loss(r, c, boxes, labels, valid, ANCHORS).values())
  grads = jax.jit(jax.grad(total, argnums=(0, 1)))(jnp.asarray(regression), jnp.asarray(logits))
  assert all(np.isfinite(np.asarray(g)).all() for g in grads)
  assert np.count_nonzero(np.asarray(grads[0]).any(-1)) > 3   # the matched boxes move


def test_bad_input():
  regression, logits, boxes, labels, valid = batch(0)
  with pytest.raises(ValueError, match=r'box_regression \(3, 209, 4\)'):
    loss.ssd_loss(regression[:, 1:], logits, boxes, labels, valid, ANCHORS)
  with pytest.raises(ValueError, match='Invalid negatives_per_positive -1'):
    loss.ssd_loss(regression, logits, boxes, labels, valid, ANCHORS, negatives_per_positive=-1)
