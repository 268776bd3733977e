"""mnv3_jax/tasks/detection/train_step.py: the loss and detections jitted over a batch sharded on 8
devices equal 1 device; plain optax training of a tiny SSDLite on det_shapes learns to detect."""
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mnv3_jax.model.backbone import MobileNetV3Backbone
from mnv3_jax.parallel import sharding
from mnv3_jax.tasks.detection import anchors, data, evaluation, scenes, ssdlite, train_step

SIZE = (64, 64)


def random_batch(seed=0, n=16, g=3, classes=4):
  """Raw outputs for SIZE and a batch of data.py's layout; the last image has no valid box."""
  rng = np.random.default_rng(seed)
  a = len(anchors.default_boxes(SIZE))
  lo = rng.uniform(0, 40, (n, g, 2))
  valid = np.arange(g)[None] < rng.integers(1, g + 1, (n, 1))
  valid[-1] = False
  batch = {'image': np.zeros((n, *SIZE, 3), np.float32),
           'boxes': np.where(valid[..., None], np.concatenate(
               [lo, lo + rng.uniform(8, 24, (n, g, 2))], -1), 0).astype(np.float32),
           'labels': np.where(valid, rng.integers(1, classes, (n, g)), 0).astype(np.int32),
           'valid': valid}
  outputs = (rng.normal(0, 1, (n, a, 4)).astype(np.float32),
             rng.normal(0, 2, (n, a, classes)).astype(np.float32))
  return outputs, batch


def on_mesh(fn, mesh, *args):
  """fn(*args) jitted with every argument's leading axis sharded over `mesh`."""
  shard = lambda tree: jax.tree.map(
      lambda x: jax.device_put(x, sharding.batch_sharded(mesh)), tree)
  return jax.jit(fn)(*(shard(a) for a in args))


def test_loss_and_detections_on_eight_devices_equal_one_device():
  assert jax.device_count() == 8
  outputs, batch = random_batch()
  one, eight = sharding.make_mesh(jax.devices()[:1]), sharding.make_mesh()
  loss_1, metrics_1 = on_mesh(train_step.loss_and_metrics, one, outputs, batch)
  loss_8, metrics_8 = on_mesh(train_step.loss_and_metrics, eight, outputs, batch)
  assert set(metrics_8) == {'loss', 'bbox_regression', 'classification'}
  assert float(metrics_1['bbox_regression']) > 0 and float(metrics_1['classification']) > 0
  np.testing.assert_allclose(loss_8, loss_1, rtol=1e-6)
  for key in metrics_1:
    np.testing.assert_allclose(metrics_8[key], metrics_1[key], rtol=1e-6)
  assert float(loss_1) == pytest.approx(float(metrics_1['bbox_regression'] +
                                              metrics_1['classification']))
  # Normalised by the global count of matched boxes: the mean of per-shard losses differs.
  per_shard = [train_step.loss_and_metrics(jax.tree.map(lambda x: x[i:i + 2], outputs),
                                           jax.tree.map(lambda x: x[i:i + 2], batch))[0]
               for i in range(0, 16, 2)]
  assert abs(float(np.mean(per_shard)) - float(loss_1)) > 1e-3
  detect = functools.partial(train_step.detect, image_size=SIZE, max_detections=20)
  det_1, det_8 = on_mesh(detect, one, outputs), on_mesh(detect, eight, outputs)
  assert det_8.boxes.shape == (16, 20, 4) and det_8.valid.any()
  assert len(det_8.boxes.addressable_shards) == 8
  # Softmax vectorises differently per shard size: scores may differ in the last bit.
  np.testing.assert_array_equal(det_8.labels, det_1.labels)
  np.testing.assert_array_equal(det_8.valid, det_1.valid)
  np.testing.assert_allclose(det_8.scores, det_1.scores, rtol=1e-6)
  np.testing.assert_allclose(det_8.boxes, det_1.boxes, rtol=1e-6, atol=1e-5)


def test_default_boxes_must_fit_the_outputs():
  outputs, batch = random_batch()
  with pytest.raises(ValueError, match=r'default_boxes of shape \(10, 4\) do not fit'):
    train_step.loss_and_metrics(outputs, batch, default_boxes=np.zeros((10, 4)))
  with pytest.raises(ValueError, match=r'do not fit the model outputs of 144 boxes for a '
                                       r'\(96, 96\) input'):
    train_step.detect(outputs, (96, 96))
