"""Detection through the trainer (mnv3_jax/tasks/detection/task.py): 8 devices = 1 device,
bit-identical resume, the eval AP against COCOeval of the eval step's detections, the picture,
init_from a classifier, preflight names, and a 2-process pod's AP over both hosts' images."""
import re

import jax
import numpy as np
import pytest

from configs import det_demo, detection
from mnv3_jax.interop import pretrained
from mnv3_jax.parallel import sharding
from mnv3_jax.tasks.detection import coco_eval, data
from mnv3_jax.train import evaluation, preflight, trainer
from tests import support


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
  return support.set_fields(c, overrides)


def _train_batch(config):
  return next(iter(data.train_iterator(config.data, global_batch_size=16, seed=0, start_step=0,
                                       process_index=0, process_count=1)))


def test_two_steps_on_8_devices_equal_1_device(det_shapes_dir):
  config = tiny(det_shapes_dir)
  support.assert_8_devices_equal_1_device(config, _train_batch(config))


def test_resume_is_bit_identical(det_shapes_dir, tmp_path):
  support.assert_resume_is_bit_identical(lambda steps: tiny(
      det_shapes_dir, num_train_steps=steps, **{'data.eval_split': 'test[:8]'}), tmp_path)


def test_eval_ap_equals_cocoeval_of_the_eval_steps_detections_and_writes_the_picture(
    det_shapes_dir, tmp_path):
  """The AP the trainer reports is COCOeval's of the detections its eval step makes (config.ssd's
  post-processing), scaled to original pixels by the test. The detections are compared from the
  same compiled step: an untrained detector's AP (~0.1%) moves with float rounding of near-tied
  scores between two compilations."""
  # 37 eval images: the last of 3 batches of 16 is padded (ignored) on 8 devices.
  config = tiny(det_shapes_dir, num_train_steps=4, **{
      'data.eval_split': 'test[:37]', 'ssd.max_detections': 50, 'ssd.score_threshold': 0.01})
  workdir = tmp_path / 'run'
  result = trainer.train_and_evaluate(config, str(workdir))
  assert result['ema_count'] == result['eval_count'] == 37
  state = support.restore_task_state(config, workdir)
  mesh = sharding.make_mesh()
  _, _, (_, _, eval_fn) = support.task_steps(config, mesh)
  found, truth = [], []
  for batch in data.eval_iterator(config.data, global_batch_size=16, process_index=0,
                                  process_count=1):
    keep = batch['mask'] > 0
    outputs = eval_fn(state.variables(ema=True), sharding.to_global(batch, mesh))
    boxes, scores, labels, valid = (np.asarray(d)[keep] for d in outputs)
    assert boxes.shape[1] == 50 and (scores[valid] > 0.01).all()     # config.ssd's
    scale = np.tile(batch['image_size'][keep][:, ::-1] / 64.0, 2)[:, None]   # to original pixels
    found.append([boxes * scale, scores, labels, valid])
    truth.append([batch['boxes'][keep] * scale, batch['labels'][keep], batch['valid'][keep],
                  batch['crowd'][keep]])
  found, truth = ([np.concatenate(x) for x in zip(*parts)] for parts in (found, truth))
  assert len(truth[0]) == 37
  want = coco_eval.coco_map(*found, *truth)
  assert want['AR100'] > 0       # the 4 steps give some true positive: the comparison can fail
  for key in coco_eval.STATS:
    np.testing.assert_allclose(result[f'ema_{key}'], want[key], rtol=1e-12, err_msg=key)
  assert result['eval_AP'] != result['ema_AP']     # two sets of weights were evaluated
  assert (workdir / 'predictions.png').stat().st_size > 1000
  assert (workdir / 'best').is_dir() and len(list((workdir / 'best').iterdir())) == 1
  assert pretrained.resolve(str(workdir))[1].name == '4'    # the best by EMA AP


def test_init_from_a_classifier_loads_the_backbone_and_leaves_the_rest_fresh(det_shapes_dir,
                                                                            tmp_path):
  config = tiny(det_shapes_dir, init_from=str(tmp_path / 'weights'))
  weights = support.classifier_weights(tmp_path / 'weights')
  state, fresh = support.init_from_state(config)
  np.testing.assert_array_equal(state.params['backbone']['stem']['conv']['kernel'],
                                weights['params']['stem']['conv']['kernel'])
  np.testing.assert_array_equal(state.ema_params['backbone']['head_conv']['conv']['kernel'],
                                weights['params']['head_conv']['conv']['kernel'])
  for part in ('head', 'extra_0_expand'):
    jax.tree.map(np.testing.assert_array_equal, state.params[part],
                 fresh.params[part])


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
  support.assert_preflight_names(tiny(det_shapes_dir), {field: value}, message, tmp_path / 'run')


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


def test_pod_ap_is_the_ap_of_every_eval_image_of_both_hosts(det_shapes_dir, tmp_path):
  """launch/local.sh's 2 processes x 4 devices: the AP process 0 reports is that of every eval
  image of both hosts, equal to what one process computes from the pod's weights."""
  # 37 eval images: shards of 19 and 18, padded to 3 batches of 8 per process.
  config = tiny(det_shapes_dir, num_train_steps=3, **{'data.eval_split': 'test[:37]'})
  workdir, log_dir = tmp_path / 'pod', tmp_path / 'logs'
  with support.running_pod(config, workdir, log_dir,
                           flags=support.main_flags(config, det_demo)) as pod:
    out, _ = pod.communicate(timeout=900)
  assert pod.returncode == 0, f'{out}\n{support.pod_logs(log_dir)}'
  found = re.search(r'eval step 3/3  AP ([\d.]+)%  EMA AP ([\d.]+)%.*  (\d+) images',
                    (log_dir / 'worker_0.log').read_text())
  assert found, support.pod_logs(log_dir)
  assert 'eval step' not in (log_dir / 'worker_1.log').read_text()

  state = support.restore_task_state(config, workdir)
  mesh = sharding.make_mesh()
  task, _, (_, _, eval_fn) = support.task_steps(config, mesh)
  one = evaluation.evaluate_state(eval_fn, None, task, state, config, mesh)
  assert one['eval_count'] == one['ema_count'] == 37
  assert one['ema_AP50'] > 0      # some true positives: the comparison can fail
  assert found.groups() == (f"{100 * one['eval_AP']:.1f}", f"{100 * one['ema_AP']:.1f}", '37')
