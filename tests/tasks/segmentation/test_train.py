"""Segmentation through the trainer (mnv3_jax/tasks/segmentation/task.py): the loss and its
ignore label, 8 devices = 1 device, bit-identical resume, the eval mIoU against a NumPy confusion
matrix of the same weights and data, init_from a classifier, preflight names, the picture."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs import seg_demo, segmentation
from mnv3_jax.parallel import sharding
from mnv3_jax.tasks import registry
from mnv3_jax.tasks.segmentation import data, data_sources, metrics
from mnv3_jax.train import preflight, trainer
from tests import support


def tiny(data_dir, **overrides):
  """configs/seg_demo.py shrunk: Small 0.35, 16 head filters, 32x32 crops, batch 16."""
  c = seg_demo.demo_config()
  c.data.data_dir = data_dir
  c.model.width = 0.35
  c.model.depthwise_impl = 'conv'
  c.head.inter_channels = 16
  c.data.crop_size = 32
  c.batch_size = 16
  c.optim.base_learning_rate = 0.02
  c.log_every_steps = 2
  c.eval_every_steps = 1000
  c.checkpoint_every_steps = 3
  return support.set_fields(c, overrides)


def _batch(n=16, size=32, classes=4, seed=0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, classes, (n, size, size)).astype(np.int32)
  labels[rng.random(labels.shape) < 0.3] = 255
  labels[0] = 255                         # one example with no scored pixel at all
  return {'image': rng.uniform(-1, 1, (n, size, size, 3)).astype(np.float32), 'label': labels}


def test_loss_is_the_mean_over_scored_pixels_of_the_global_batch(seg_shapes_dir):
  task = registry.get(tiny(seg_shapes_dir))
  batch = _batch()
  logits = np.random.default_rng(1).normal(size=(*batch['label'].shape, 4)).astype(np.float32)
  loss, values = task.loss_and_metrics(jnp.asarray(logits), batch, None)
  keep = batch['label'] != 255
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  want = -np.take_along_axis(log_p, np.where(keep, batch['label'], 0)[..., None], -1)[..., 0]
  np.testing.assert_allclose(loss, want[keep].mean(), rtol=1e-5)
  np.testing.assert_allclose(values['pixel_accuracy'],
                             (logits.argmax(-1) == batch['label'])[keep].mean(), rtol=1e-6)
  # Per device (bn_stats='per_device'): shards score different pixel counts (shard 0 none), yet
  # the mean over devices of the per-device values is the global batch's.
  mesh = sharding.make_mesh(jax.devices()[:8])
  per_device = jax.jit(jax.shard_map(
      lambda x, b: jax.lax.pmean(task.loss_and_metrics(x, b, 'data'), 'data'), mesh=mesh,
      in_specs=(P('data'), P('data')), out_specs=P(), check_vma=False))
  got, got_values = per_device(logits, batch)
  np.testing.assert_allclose(got, loss, rtol=1e-5)
  np.testing.assert_allclose(got_values['pixel_accuracy'], values['pixel_accuracy'], rtol=1e-5)


def test_two_steps_on_8_devices_equal_1_device(seg_shapes_dir):
  support.assert_8_devices_equal_1_device(tiny(seg_shapes_dir), _batch())


def test_resume_is_bit_identical(seg_shapes_dir, tmp_path):
  support.assert_resume_is_bit_identical(lambda steps: tiny(
      seg_shapes_dir, num_train_steps=steps, **{'data.eval_split': 'test[:8]'}), tmp_path)


def _numpy_miou(labels, predictions, classes, ignore):
  counts = np.zeros((classes, classes), np.int64)
  keep = labels != ignore
  np.add.at(counts, (labels[keep], predictions[keep]), 1)
  tp = np.diag(counts).astype(np.float64)
  union = counts.sum(0) + counts.sum(1) - tp
  return float(np.mean(tp[union > 0] / union[union > 0])), tp.sum() / counts.sum()


def test_eval_miou_equals_a_numpy_confusion_matrix_of_the_same_weights(seg_shapes_dir, tmp_path):
  # 37 eval images: the last of 3 batches of 16 is padded (ignored) on 8 devices.
  config = tiny(seg_shapes_dir, num_train_steps=4, **{'data.eval_split': 'test[:37]'})
  workdir = tmp_path / 'run'
  result = trainer.train_and_evaluate(config, str(workdir))
  assert result['ema_count'] == result['eval_count'] == 37
  state = support.restore_task_state(config, workdir)
  task = registry.get(config)
  model = task.build_model(task.check_config())
  labels, predictions = [], []
  for batch in data.eval_iterator(config.data, global_batch_size=16, process_index=0,
                                  process_count=1):
    keep = batch['mask'] > 0
    logits = model.apply(state.variables(ema=True), batch['image'][keep], train=False)
    labels.append(batch['label'][keep])
    predictions.append(np.asarray(logits).argmax(-1))
  labels, predictions = np.concatenate(labels), np.concatenate(predictions)
  assert len(labels) == 37
  miou, accuracy = _numpy_miou(labels, predictions, task.num_classes, 255)
  assert 0 < miou < 1
  np.testing.assert_allclose(result['ema_miou'], miou, rtol=1e-6)
  np.testing.assert_allclose(result['ema_pixel_accuracy'], accuracy, rtol=1e-6)
  assert result['eval_miou'] != result['ema_miou']     # two sets of weights were evaluated
  assert (workdir / 'predictions.png').stat().st_size > 1000
  assert (workdir / 'best').is_dir() and len(list((workdir / 'best').iterdir())) == 1


def test_init_from_a_classifier_loads_the_backbone_and_leaves_the_head_fresh(seg_shapes_dir,
                                                                            tmp_path):
  config = tiny(seg_shapes_dir, init_from=str(tmp_path / 'weights'))
  weights = support.classifier_weights(tmp_path / 'weights')
  state, fresh = support.init_from_state(config)
  backbone, head = state.params['backbone'], state.params['head']
  np.testing.assert_array_equal(backbone['stem']['conv']['kernel'],
                                weights['params']['stem']['conv']['kernel'])
  np.testing.assert_array_equal(state.ema_params['backbone']['head_conv']['conv']['kernel'],
                                weights['params']['head_conv']['conv']['kernel'])
  np.testing.assert_array_equal(state.batch_stats['backbone']['block_3']['project']['bn']['mean'],
                                weights['batch_stats']['block_3']['project']['bn']['mean'])
  jax.tree.map(np.testing.assert_array_equal, head, fresh.params['head'])
  # A backbone with other compute options is refused, naming the option.
  config.model.activation = 'relu'
  with pytest.raises(ValueError, match="model.activation: weights 'hard_swish', config 'relu'"):
    support.init_from_state(config)


@pytest.mark.parametrize('field,value,message', [
    ('head.inter_channels', 0, 'Invalid head.inter_channels 0'),
    ('head.pooling', 'max', "Invalid head.pooling 'max'"),
    ('head.low_tap', 'block_99', "Invalid head.low_tap 'block_99'"),
    ('model.output_stride', 8, 'Invalid model.output_stride 8'),
    ('model.reduced_tail', 'half', "Unknown model.reduced_tail 'half'"),
    ('quant', 'qat', "Invalid quant 'qat'; allowed: 'none'"),
    ('data.crop_size', 16, 'Invalid data.crop_size 16'),
    ('data.dataset', 'voc', "config.data.dataset='voc'"),
    ('task', 'keypoints', "Invalid task 'keypoints'"),
])
def test_a_bad_segmentation_field_is_named_before_the_workdir_exists(seg_shapes_dir, tmp_path, field,
                                                                     value, message):
  support.assert_preflight_names(tiny(seg_shapes_dir), {field: value}, message, tmp_path / 'run')


def test_the_demo_config_passes_preflight_and_names_its_model(seg_shapes_dir, tmp_path):
  config = seg_demo.get_config()
  config.data.data_dir = seg_shapes_dir
  checked = preflight.check_config(config, str(tmp_path / 'run'), sharding.make_mesh())
  assert (checked.info.num_classes, checked.info.num_train_examples) == (4, 2000)
  line, = checked.task.header_lines(checked.task.build_model(checked.info), checked.info)
  assert line.startswith('LR-ASPP MobileNetV3-Small 1.0 (output stride 16') and '128 filters' in line


def test_the_config_files_hold_the_pipeline_fields():
  """configs/segmentation.py takes the data fields from mnv3_jax/defaults.py, as data.py does
  (ignore label: metrics.py's), and its presets name only datasets the pipeline knows."""
  assert set(segmentation.segmentation_config().data) == set(data.DEFAULTS)
  assert data.DEFAULTS['ignore_label'] == metrics.IGNORE_LABEL
  assert set(segmentation.DATASETS) == set(data_sources.NAMES)
