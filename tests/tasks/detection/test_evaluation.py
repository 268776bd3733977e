"""mnv3_jax/tasks/detection/evaluation.py: COCO mAP of sharded, padded eval batches on 1 device,
8 devices and 2 processes equals coco_eval on the whole unpadded set in original pixels."""
import json

import jax
import numpy as np
import pytest

from mnv3_jax.parallel import sharding
from mnv3_jax.tasks.detection import anchors, coco_eval, evaluation, nms, postprocess
from tests import support
from tests.tasks.detection import evaluation_worker as worker



@pytest.fixture(scope='module')
def reference():
  """coco_eval on the whole set, every image once, boxes scaled to original pixels here."""
  ex = worker.dataset()
  one = lambda b, c: postprocess.detections(b, c, anchors.default_boxes(worker.INPUT),
                                            worker.INPUT, max_detections=100)
  det = jax.jit(jax.vmap(one))(ex['box_regression'], ex['cls_logits'])
  h, w = worker.INPUT
  scale = np.stack([ex['image_size'][:, 1] / w, ex['image_size'][:, 0] / h] * 2, -1)[:, None]
  stats = coco_eval.coco_map(np.asarray(det.boxes) * scale, det.scores, det.labels, det.valid,
                             ex['boxes'] * scale, ex['labels'], ex['valid'], ex['crowd'])
  assert 0.2 < stats['AP50'] < 0.9 and stats['AP_small'] > 0 and stats['AP_medium'] > 0, stats
  return stats


def assert_same(got, want):
  assert got.pop('num_images') == worker.NUM_IMAGES
  assert got == pytest.approx(want, abs=1e-12)


def test_one_device_equals_coco_eval_on_the_whole_set_and_padding_is_not_counted(reference):
  batches = worker.padded_batches(worker.dataset(), 16, 3)   # 37 of 48 slots are real
  mesh = sharding.make_mesh(jax.devices()[:1])
  assert_same(worker.evaluate(batches, mesh), reference)
  counted = [dict(b, mask=np.ones_like(b['mask'])) for b in batches]
  assert worker.evaluate(counted, mesh)['AP50'] < reference['AP50'] - 0.01
  # The batches' order does not matter (images are sorted by id).
  assert_same(worker.evaluate(batches[::-1], mesh), reference)


def test_original_pixels_decide_the_area_ranges(reference):
  batches = worker.padded_batches(worker.dataset(), 16, 3)
  for b in batches:
    b['image_size'] = np.full_like(b['image_size'], 64)   # as if evaluated at input size
  at_input = worker.evaluate(batches, sharding.make_mesh(jax.devices()[:1]))
  assert at_input['AP_medium'] == -1 and reference['AP_medium'] > 0   # every box < 32 px there


def test_eight_devices_equal_coco_eval_on_the_whole_set(reference):
  assert jax.device_count() == 8
  mesh = sharding.make_mesh()
  batches = worker.padded_batches(worker.dataset(), 16, 3)
  assert len(sharding.to_global(batches[0], mesh)['cls_logits'].addressable_shards) == 8
  assert_same(worker.evaluate(batches, mesh), reference)



def test_two_processes_equal_coco_eval_on_the_whole_set(tmp_path, reference):
  out = tmp_path / 'stats.json'
  support.run_two_processes('tests.tasks.detection.evaluation_worker', str(out))
  assert_same(json.loads(out.read_text()), reference)


def test_bad_inputs_are_named():
  with pytest.raises(ValueError, match=r'Invalid input_size \(64,\)'):
    evaluation.DetectionEvaluator((64,))
  evaluator = evaluation.DetectionEvaluator(worker.INPUT)
  with pytest.raises(ValueError, match='No eval examples were added'):
    evaluator.compute()
  batch = worker.padded_batches(worker.dataset(), 16, 3)[0]
  dets = nms.Detections(*(np.zeros((16, 5) + s, t) for s, t in (
      ((4,), np.float32), ((), np.float32), ((), np.int32), ((), bool))))
  with pytest.raises(ValueError, match=r"lacks \['crowd'\]"):
    evaluator.update(dets, {k: v for k, v in batch.items() if k != 'crowd'})
  with pytest.raises(ValueError, match=r'detections of \[15, 15, 15, 15\] examples do not fit'):
    evaluator.update(type(dets)(*(d[:15] for d in dets)), batch)


def test_tied_scores_give_one_result_whatever_the_order_of_the_images():
  """Two images, one box each; equal scores, one detection right and one wrong: COCOeval ranks
  tied detections by image order, so only sorting the images by id makes the AP well defined."""
  def batch(ids):
    right = {'boxes': [[10, 10, 30, 30]], 'scores': [0.9], 'labels': [1], 'valid': [True]}
    wrong = dict(right, boxes=[[40, 40, 60, 60]])
    dets = [right if i == 7 else wrong for i in ids]
    detections = nms.Detections(*(np.array([d[f] for d in dets]) for f in nms.Detections._fields))
    return detections, {'boxes': np.array([[[10, 10, 30, 30]]] * 2, np.float32),
                        'labels': np.ones((2, 1), np.int32), 'valid': np.ones((2, 1), bool),
                        'crowd': np.zeros((2, 1), bool), 'image_size': np.full((2, 2), 64),
                        'image_id': np.array(ids), 'mask': np.ones(2, np.float32)}
  results = []
  for ids in ((7, 8), (8, 7)):
    evaluator = evaluation.DetectionEvaluator(worker.INPUT)
    evaluator.update(*batch(ids))
    results.append(evaluator.compute())
  assert results[0] == results[1] and results[0]['AP50'] == pytest.approx(0.5, abs=0.01)
