"""mnv3_jax/tasks/detection/train_step.py: the loss and detections jitted over a batch sharded on 8
devices equal 1 device, the per-device loss (shard_map) averages to the global one; plain optax
training of a tiny SSDLite on det_shapes learns to detect."""
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from configs import det_demo
from mnv3_jax.model.backbone import MobileNetV3Backbone
from mnv3_jax.parallel import sharding
from mnv3_jax.tasks import registry
from mnv3_jax.tasks.detection import anchors, data, evaluation, ssdlite, train_step

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


def test_per_device_loss_averages_to_the_global_batch_loss():
  """bn_stats='per_device': each shard's loss is normalised by the global matched count, so the
  mean over devices is the global batch's loss (shards hold different numbers of boxes)."""
  task = registry.get(det_demo.demo_config())   # its loss reads config.ssd only
  outputs, batch = random_batch()
  loss, values = task.loss_and_metrics(outputs, batch, None)
  mesh = sharding.make_mesh(jax.devices()[:8])
  per_device = jax.jit(jax.shard_map(
      lambda o, b: jax.lax.pmean(task.loss_and_metrics(o, b, 'data'), 'data'), mesh=mesh,
      in_specs=(P('data'), P('data')), out_specs=P(), check_vma=False))
  got, got_values = per_device(outputs, batch)
  np.testing.assert_allclose(got, loss, rtol=1e-5)
  for key in ('bbox_regression', 'classification'):
    np.testing.assert_allclose(got_values[key], values[key], rtol=1e-5)


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


# Optimised XLA code for the training test's two programs (conftest.py compiles the suite at
# optimisation level 0, which halves the speed of these 300 steps).
_FAST = {'xla_backend_optimization_level': 3}


def test_plain_optax_training_on_det_shapes_raises_the_map(det_shapes_dir):
  """SSDLite on MobileNetV3-Small 0.5 at 96x96, 300 steps of 16 (AdamW, one-cycle to 2e-2), no
  crops (flips only): COCO mAP on 100 test images well above the untrained model's (measured on
  the 2-core box: AP50 0.001 -> 0.25, AP 0.000 -> 0.09)."""
  start = time.time()
  size, steps = 96, 300
  cfg = data.default_data_config()
  cfg.update(data_dir=str(det_shapes_dir), image_size=size, crop_min_ious=(1.0,),
             eval_split='test[:100]')
  backbone = MobileNetV3Backbone(variant='small', width=0.5, reduced_tail='torchvision',
                                 bn_momentum=0.9)
  model = ssdlite.SSDLiteMobileNetV3(backbone, num_classes=4, extra_widths=(64, 32, 32, 16))
  variables = ssdlite.init_variables(model, jax.random.key(0), (size, size))
  tx = optax.adamw(optax.cosine_onecycle_schedule(steps, 2e-2), weight_decay=1e-4)

  @functools.partial(jax.jit, compiler_options=_FAST)
  def train(state, batch):
    params, stats, opt_state = state
    def loss_fn(p):
      outputs, updates = model.apply({'params': p, 'batch_stats': stats}, batch['image'],
                                     train=True, mutable=['batch_stats'])
      value, _ = train_step.loss_and_metrics(outputs, batch)
      return value, updates['batch_stats']
    (value, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), stats, opt_state), value

  @functools.partial(jax.jit, compiler_options=_FAST)
  def detect(params, stats, images):
    outputs = model.apply({'params': params, 'batch_stats': stats}, images)
    return train_step.detect(outputs, (size, size))

  eval_batches = list(data.eval_iterator(cfg, global_batch_size=50, process_index=0,
                                         process_count=1))
  def mean_ap(state):
    evaluator = evaluation.DetectionEvaluator((size, size))
    for batch in eval_batches:
      evaluator.update(detect(state[0], state[1], jnp.asarray(batch['image'])), batch)
    return evaluator.compute()

  state = (variables['params'], variables['batch_stats'], tx.init(variables['params']))
  before = mean_ap(state)
  batches = data.train_iterator(cfg, global_batch_size=16, seed=0, start_step=0, process_index=0,
                                process_count=1)
  losses = []
  for _ in range(steps):
    state, value = train(state, next(batches))
    losses.append(float(value))
  after = mean_ap(state)
  assert before['num_images'] == after['num_images'] == 100
  assert np.mean(losses[-30:]) < 0.6 * np.mean(losses[:10]), losses
  assert before['AP50'] < 0.02 and after['AP50'] > 0.12 and after['AP'] > 0.04, (before, after)
  print(f'AP50 {before["AP50"]:.3f} -> {after["AP50"]:.3f}, AP {before["AP"]:.3f} -> '
        f'{after["AP"]:.3f}, {time.time() - start:.0f} s')
