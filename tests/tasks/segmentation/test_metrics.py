"""mnv3_jax/tasks/segmentation/metrics.py: exact confusion matrices on 1 device, 8 devices and 2
processes, the ignore label, the mIoU convention and the 64-bit merge."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnv3_jax.parallel import sharding
from mnv3_jax.tasks.segmentation import metrics
from tests import support
from tests.tasks.segmentation import metrics_worker as worker



def reference(labels, predictions, num_classes, ignore, mask=None):
  """NumPy (C, C) counts: rows true class, columns prediction."""
  keep = (labels != ignore) & (labels < num_classes)
  if mask is not None:
    keep &= np.asarray(mask, bool)[:, None, None]
  out = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(out, (labels[keep], predictions[keep]), 1)
  return out


def test_hand_counted_example_and_its_scores():
  labels = jnp.array([[[0, 1], [255, 1]]])
  predictions = jnp.array([[[0, 0], [1, 1]]])
  counts = metrics.confusion_matrix(labels, predictions, 2)
  np.testing.assert_array_equal(counts, [[1, 0], [1, 1]])   # the 255 pixel is not counted
  s = metrics.scores(counts)
  np.testing.assert_allclose(s['iou'], [0.5, 0.5])          # 1 / (1 + 1 + 0), 1 / (1 + 0 + 1)
  assert s['miou'] == 0.5 and s['pixel_accuracy'] == pytest.approx(2 / 3)
  assert s['mean_accuracy'] == pytest.approx((1 + 0.5) / 2)


def test_miou_averages_the_classes_with_a_nonzero_union():
  counts = np.array([[3, 1, 0], [0, 0, 0], [0, 0, 0]])   # class 2 absent from labels and output
  s = metrics.scores(counts)
  np.testing.assert_allclose(s['iou'][:2], [0.75, 0.0])
  assert np.isnan(s['iou'][2]) and s['miou'] == pytest.approx(0.375)
  assert s['mean_accuracy'] == 0.75   # class 1 predicted but never true: no recall term
  assert np.isnan(metrics.scores(np.zeros((2, 2)))['miou'])


def test_one_device_matches_numpy_with_padding_and_ignored_pixels():
  labels, predictions = worker.dataset()
  assert (labels == worker.IGNORE).mean() > 0.05   # the ignore label is exercised
  batches = worker.padded_batches(labels, predictions, 16, 3)   # 37 of 48 slots are real
  got = worker.count(batches, sharding.make_mesh(jax.devices()[:1]))
  want = reference(labels, predictions, worker.NUM_CLASSES, worker.IGNORE)
  np.testing.assert_array_equal(got, want)
  # The mask matters: padding is class 0 predicted as class 0.
  unmasked = [dict(b, mask=np.ones_like(b['mask'])) for b in batches]
  assert worker.count(unmasked, sharding.make_mesh(jax.devices()[:1]))[0, 0] == want[0, 0] + 11 * 36


def test_eight_devices_match_numpy():
  assert jax.device_count() == 8
  labels, predictions = worker.dataset(seed=1)
  mesh = sharding.make_mesh()
  batch = worker.padded_batches(labels, predictions, 16, 3)[0]
  global_batch = sharding.to_global(batch, mesh)
  assert len(global_batch['labels'].addressable_shards) == 8   # really split over the devices
  got = worker.count(worker.padded_batches(labels, predictions, 16, 3), mesh)
  np.testing.assert_array_equal(
      got, reference(labels, predictions, worker.NUM_CLASSES, worker.IGNORE))



def test_two_processes_each_counting_its_shard_match_numpy(tmp_path):
  out = tmp_path / 'counts.npy'
  support.run_two_processes('tests.tasks.segmentation.metrics_worker', str(out))
  labels, predictions = worker.dataset()
  np.testing.assert_array_equal(
      np.load(out), reference(labels, predictions, worker.NUM_CLASSES, worker.IGNORE))


def test_merge_and_reduce_carry_into_the_high_word():
  cls = metrics.ConfusionMatrix.configure(2)
  big = cls(low=jnp.full((2, 2), 2**32 - 1, jnp.uint32), high=jnp.ones((2, 2), jnp.uint32))
  one = cls.from_model_output(jnp.zeros((1, 1, 1), jnp.int32), jnp.zeros((1, 1, 1), jnp.int32))
  merged = big.merge(one).counts()
  assert merged[0, 0] == 2**33 and merged[1, 1] == 2**33 - 1   # (2**32 + 2**32 - 1) + 1
  stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), big, one)   # clu's per-device reduce
  np.testing.assert_array_equal(stacked.reduce().counts(), merged)
  assert (cls.empty().merge(one).counts() == one.counts()).all()


def test_other_ignore_labels_and_out_of_range_labels_are_not_counted():
  labels = jnp.array([[[0, 1, 2, 7]]])
  predictions = jnp.array([[[0, 1, 1, 1]]])
  np.testing.assert_array_equal(   # 2 is a class but ignored, 7 is no class
      metrics.confusion_matrix(labels, predictions, 3, ignore_label=2),
      [[1, 0, 0], [0, 1, 0], [0, 0, 0]])


@pytest.mark.parametrize('call, match', [
    (lambda: metrics.confusion_matrix(jnp.zeros((1, 2, 2), int), jnp.zeros((1, 2, 2), int), 0),
     'num_classes=0'),
    (lambda: metrics.confusion_matrix(jnp.zeros((1, 2, 2), int), jnp.zeros((1, 2, 3), int), 3),
     r'predictions of shape \(1, 2, 3\)'),
    (lambda: metrics.confusion_matrix(jnp.zeros((2, 2), int), jnp.zeros((2, 2), int), 3),
     r'labels of shape \(2, 2\)'),
    (lambda: metrics.confusion_matrix(jnp.zeros((1, 2, 2), int), jnp.zeros((1, 2, 2)), 3),
     'argmax the logits'),
    (lambda: metrics.confusion_matrix(jnp.zeros((2, 1, 1), int), jnp.zeros((2, 1, 1), int), 3,
                                      mask=jnp.ones(3)), r'mask of shape \(3,\)'),
    (lambda: metrics.ConfusionMatrix.configure(3, ignore_label=None), 'ignore_label=None'),
    (lambda: metrics.ConfusionMatrix.empty(), 'use ConfusionMatrix.configure'),
])
def test_bad_arguments_are_named(call, match):
  with pytest.raises(ValueError, match=match):
    call()
