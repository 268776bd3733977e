"""Detection through the trainer (mnv3_jax/tasks/detection/task.py): the loss per device, 8 devices
= 1 device, bit-identical resume, the eval AP against COCOeval of the same weights and data, the
picture, init_from a classifier, preflight names."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs import det_demo, detection
from mnv3_jax.interop import pretrained
from mnv3_jax.model import MobileNetV3
from mnv3_jax.parallel import sharding
from mnv3_jax.tasks import registry
from mnv3_jax.tasks.detection import coco_eval, data, train_step
from mnv3_jax.train import checkpointing, init_from, preflight, steps, trainer
from tests.tasks.detection.test_train_step import random_batch


def tiny(data_dir, **overrides):
  """configs/det_demo.py shrunk: Small 0.35, extra maps 32/16/16/16, 64x64 inputs, batch 16."""
  c = det_demo.demo_config()
  c.data.data_dir = data_dir
  c.model.width = 0.35
  c.model.depthwise_impl = 'conv'
  c.head.extra_widths = (32, 16, 16, 16)
  c.data.image_size = 64
  c.batch_size = 16
  c.optim.base_learning_rate = 0.02
  c.log_every_steps = 2
  c.eval_every_steps = 1000
  c.checkpoint_every_steps = 3
  for key, value in overrides.items():
    *parents, leaf = key.split('.')
    node = c
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def setup(config, mesh):
  task = registry.get(config)
  info = task.check_config()
  model = task.build_model(info)
  steps_per_epoch = max(1, info.num_train_examples // config.batch_size)
  schedule, tx = trainer.build_optimizer(config, steps_per_epoch)
  return task, model, steps.jit_steps(model, tx, schedule, config, mesh, task=task)


def test_per_device_loss_averages_to_the_global_batch_loss(det_shapes_dir):
  """bn_stats='per_device': each shard's loss is normalised by the global matched count, so the
  mean over devices is the global batch's loss (shards hold different numbers of boxes)."""
  task = registry.get(tiny(det_shapes_dir))
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


def _train_batch(config):
  return next(iter(data.train_iterator(config.data, global_batch_size=16, seed=0, start_step=0,
                                       process_index=0, process_count=1)))


def test_two_steps_on_8_devices_equal_1_device(det_shapes_dir):
  config = tiny(det_shapes_dir)
  batch = _train_batch(config)
  results = []
  for devices in (jax.devices()[:8], jax.devices()[:1]):
    mesh = sharding.make_mesh(devices)
    _, _, (init_fn, train_fn, _) = setup(config, mesh)
    state = init_fn(jax.random.key(0))
    for _ in range(2):
      state, metrics = train_fn(state, sharding.to_global(batch, mesh))
    results.append((jax.device_get(state), metrics.compute()))
  (s8, m8), (s1, m1) = results
  deltas = jax.tree.map(lambda a, b: np.max(np.abs(a - b)), s8.params, s1.params)
  assert max(jax.tree.leaves(deltas)) <= 1e-5
  np.testing.assert_allclose(m8['loss'], m1['loss'], rtol=1e-5)
  init = jax.device_get(init_fn(jax.random.key(0)))
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: np.max(np.abs(a - b)), s1.params, init.params))
  assert max(moved) > 1e-4     # the steps changed the weights: equality is not vacuous


def restore(config, workdir):
  mesh = sharding.make_mesh()
  _, _, (init_fn, _, _) = setup(config, mesh)
  ckpt = checkpointing.Checkpointer(str(workdir), save_every_steps=1)
  try:
    state, step = ckpt.restore(trainer.abstract_train_state(init_fn, mesh))
  finally:
    ckpt.close()
  assert step == config.num_train_steps
  return jax.device_get(state)


def test_resume_is_bit_identical(det_shapes_dir, tmp_path):
  straight = tiny(det_shapes_dir, num_train_steps=6, **{'data.eval_split': 'test[:8]'})
  trainer.train_and_evaluate(straight, str(tmp_path / 'straight'))
  first = tiny(det_shapes_dir, num_train_steps=3, **{'data.eval_split': 'test[:8]'})
  trainer.train_and_evaluate(first, str(tmp_path / 'resumed'))
  trainer.train_and_evaluate(straight, str(tmp_path / 'resumed'))
  a, b = (restore(straight, tmp_path / name) for name in ('straight', 'resumed'))
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_eval_ap_equals_cocoeval_of_the_same_weights_and_writes_the_picture(det_shapes_dir,
                                                                          tmp_path):
  # 37 eval images: the last of 3 batches of 16 is padded (ignored) on 8 devices.
  config = tiny(det_shapes_dir, num_train_steps=4, **{'data.eval_split': 'test[:37]'})
  workdir = tmp_path / 'run'
  result = trainer.train_and_evaluate(config, str(workdir))
  assert result['ema_count'] == result['eval_count'] == 37
  state = restore(config, workdir)
  task = registry.get(config)
  model = task.build_model(task.check_config())
  s = config.ssd
  detect = jax.jit(lambda v, x: train_step.detect(
      model.apply(v, x, train=False), x.shape[1:3], max_detections=s.max_detections,
      score_threshold=s.score_threshold, iou_threshold=s.nms_iou,
      candidates_per_class=s.candidates_per_class))
  found, truth = [], []
  for batch in data.eval_iterator(config.data, global_batch_size=16, process_index=0,
                                  process_count=1):
    keep = batch['mask'] > 0
    found.append([np.asarray(d)[keep] for d in detect(state.variables(ema=True), batch['image'])])
    scale = batch['image_size'][keep][:, ::-1] / 64.0                   # to original pixels
    truth.append([batch['boxes'][keep] * np.tile(scale, 2)[:, None], batch['labels'][keep],
                  batch['valid'][keep], batch['crowd'][keep]])
    found[-1][0] = found[-1][0] * np.tile(scale, 2)[:, None]
  found, truth = ([np.concatenate(x) for x in zip(*parts)] for parts in (found, truth))
  assert len(truth[0]) == 37
  want = coco_eval.coco_map(*found, *truth)
  assert want['AP50'] > 0        # the 4 steps give some true positive: the comparison can fail
  for key in coco_eval.STATS:
    np.testing.assert_allclose(result[f'ema_{key}'], want[key], rtol=1e-9, err_msg=key)
  assert result['eval_AP'] != result['ema_AP']     # two sets of weights were evaluated
  assert (workdir / 'predictions.png').stat().st_size > 1000
  assert (workdir / 'best').is_dir() and len(list((workdir / 'best').iterdir())) == 1
  assert pretrained.resolve(str(workdir))[1].name == '4'    # the best by EMA AP


def test_init_from_a_classifier_loads_the_backbone_and_leaves_the_rest_fresh(det_shapes_dir,
                                                                            tmp_path):
  config = tiny(det_shapes_dir)
  classifier = MobileNetV3(variant='small', width=0.35, num_classes=10, depthwise_impl='conv')
  weights = jax.device_get(classifier.init(jax.random.key(7), jnp.zeros((1, 32, 32, 3))))
  pretrained.save(tmp_path / 'weights', weights, classifier)
  config.init_from = str(tmp_path / 'weights')
  mesh = sharding.make_mesh()
  task, model, (init_fn, _, _) = setup(config, mesh)
  loaded = init_from.read(config, task, model)
  fresh = init_fn(jax.random.key(0))
  state = jax.device_get(init_from.apply(fresh, loaded, task, sharding.replicated(mesh)))
  np.testing.assert_array_equal(state.params['backbone']['stem']['conv']['kernel'],
                                weights['params']['stem']['conv']['kernel'])
  np.testing.assert_array_equal(state.ema_params['backbone']['head_conv']['conv']['kernel'],
                                weights['params']['head_conv']['conv']['kernel'])
  for part in ('head', 'extra_0_expand'):
    jax.tree.map(np.testing.assert_array_equal, state.params[part],
                 jax.device_get(fresh.params[part]))


@pytest.mark.parametrize('field,value,message', [
    ('model.output_stride', 16, 'Invalid model.output_stride 16'),
    ('head.extra_widths', (512, 256), 'Invalid head.extra_widths'),
    ('ssd.match_iou', 1.5, 'Invalid ssd.match_iou 1.5'),
    ('ssd.max_detections', 300, 'Invalid ssd.max_detections 300'),
    ('ssd.candidates_per_class', 0, 'Invalid ssd.candidates_per_class 0'),
    ('label_smoothing', 0.1, 'Invalid label_smoothing 0.1'),
    ('quant', 'qat', "Invalid quant 'qat'; allowed: 'none'"),
    ('data.image_size', 16, 'config.data.image_size=16 is invalid'),
    ('data.dataset', 'coco', "config.data.dataset='coco'"),
])
def test_a_bad_detection_field_is_named_before_the_workdir_exists(det_shapes_dir, tmp_path, field,
                                                                  value, message):
  config = tiny(det_shapes_dir)
  *parents, leaf = field.split('.')
  node = config
  for p in parents:
    node = node[p]
  node[leaf] = value
  with pytest.raises(ValueError, match=message.replace('(', r'\(').replace(')', r'\)')):
    preflight.check_config(config, str(tmp_path / 'run'), sharding.make_mesh())
  assert not (tmp_path / 'run').exists()


def test_the_demo_config_passes_preflight_and_names_its_model(det_shapes_dir, tmp_path):
  config = det_demo.get_config()
  config.data.data_dir = det_shapes_dir
  checked = preflight.check_config(config, str(tmp_path / 'run'), sharding.make_mesh())
  assert (checked.info.num_classes, checked.info.num_train_examples) == (4, 2000)
  line, = checked.task.header_lines(checked.task.build_model(checked.info), checked.info)
  assert line.startswith('SSDLite MobileNetV3-Small 1.0') and '3 classes + background' in line
  coco = detection.get_config('dataset=coco/2017,variant=small,tail=official')
  assert (coco.data.image_size, coco.model.reduced_tail, coco.model.variant) == (
      320, 'official', 'small')
