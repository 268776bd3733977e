"""Object detection through the trainer: SSDLite on a MobileNetV3 backbone (ssdlite.py), the
detection input pipeline (data.py), SSD's loss (loss.py), COCO mAP of the gathered detections of
every host (evaluation.py).

Config (`configs/detection.py` has every field):
  task    'detection'
  model   MobileNetV3Backbone's options (variant, width, ..., reduced_tail; output_stride 32)
  head    extra_widths: the widths of the four extra feature maps (torchvision's 512, 256, 256, 128)
  ssd     match_iou and negatives_per_positive (the loss's matching and hard-negative mining);
          score_threshold, nms_iou, candidates_per_class, max_detections (the evaluation's
          post-processing, torchvision's defaults but 100 detections: COCOeval scores 100)
  data    data.py's fields; the dataset decides the classes (+1 for the background)

Training loss: smooth-L1 box regression plus cross-entropy with 3:1 hard-negative mining, both
over the matched default boxes of the global batch (also with per-device BatchNorm); train
metrics: loss, bbox_regression, classification. Evaluation at the network's input size (boxes
mapped back to each image's original pixels for COCO's areas): the 12 COCO statistics (AP, AP50,
..., AR_large) and count (images). The best checkpoint is the one with the best EMA AP. `init_from`
a classifier loads the backbone arrays whose names and shapes match; extra layers and head start
fresh. Quantization-aware training and label smoothing are classification's (refused here).
"""
import functools
from typing import List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath

from mnv3_jax import config_fields as cf
from mnv3_jax.model import summary
from mnv3_jax.model.backbone import MobileNetV3Backbone
from mnv3_jax.tasks import base
from mnv3_jax.tasks.detection import (data, data_sources, evaluation, ssdlite, train_step,
                                     visualize)

PICTURE = 'predictions.png'   # in the workdir, written at the end of training
PICTURE_EXAMPLES = 6
PICTURE_SCORE = 0.5           # detections drawn: score >= this

_probability = cf.real(lambda v: 0 <= v <= 1)
_count = cf.integer(lambda v: v >= 1)
FIELDS = (
    ('model.output_stride', '32 (SSDLite taps C4 at stride 16 and C5 at 32)', lambda v: v == 32),
    ('head.extra_widths', 'four integers >= 2 (the extra feature maps after C5)',
     lambda v: isinstance(v, (tuple, list)) and len(v) == 4 and all(
         cf.integer(lambda w: w >= 2)(w) for w in v)),
    ('ssd.match_iou', 'a number in [0, 1]', _probability),
    ('ssd.negatives_per_positive', 'a finite number >= 0', cf.real(lambda v: v >= 0)),
    ('ssd.score_threshold', 'a number in [0, 1]', _probability),
    ('ssd.nms_iou', 'a number in [0, 1]', _probability),
    ('ssd.candidates_per_class', 'an integer >= 1', _count),
    ('ssd.max_detections', 'an integer in [1, 100] (COCOeval scores 100 per image)',
     cf.integer(lambda v: 1 <= v <= 100)),
    ('quant', "'none' (quantization-aware training is classification's)", lambda v: v == 'none'),
    ('label_smoothing', "0.0 (SSD's classification loss has none)", lambda v: v == 0),
)


TrainMetrics = base.train_metrics('bbox_regression', 'classification')


class _CocoAccumulator(base.EvalAccumulator):
  """`evaluation.DetectionEvaluator` of the eval steps' detections and their batches' ground
  truth (gathered from the sharded batch on the host, not through the jitted step)."""

  def __init__(self, input_size: Tuple[int, int]):
    self._evaluator = evaluation.DetectionEvaluator(input_size)

  def add(self, outputs, batch) -> None:
    self._evaluator.update(outputs, batch)

  def result(self):
    found = self._evaluator.compute()
    found['count'] = found.pop('num_images')
    return found


class Detection(base.Task):
  """SSDLite MobileNetV3 object detection (module docstring)."""
  name = 'detection'
  report = base.ReportNames('bbox_regression', 'box loss', 'AP', 'AP', train_percent=False)
  train_metrics = TrainMetrics
  init_from_scope = 'backbone'
  pipeline = data

  @functools.cached_property
  def num_classes(self) -> int:
    """Classes including the background (class 0)."""
    return data_sources.check_dataset(self.config.data.dataset).num_classes

  @property
  def input_size(self) -> Tuple[int, int]:
    return (self.config.data.image_size,) * 2

  def check_config(self) -> data.DatasetInfo:
    c = self.config
    data.check_config(c.data)
    cf.check_fields(c, FIELDS)
    cf.construct(MobileNetV3Backbone, c.model.to_dict(), 'model')
    return data.get_dataset_info(c.data)

  def build_model(self, info=None) -> ssdlite.SSDLiteMobileNetV3:
    return ssdlite.SSDLiteMobileNetV3(MobileNetV3Backbone(**self.config.model),
                                      num_classes=self.num_classes,
                                      extra_widths=tuple(self.config.head.extra_widths))

  def init_image_size(self) -> Tuple[int, int]:
    return self.input_size

  def header_lines(self, model, info) -> List[str]:
    counts = summary.summarize(model, self.input_size)
    backbone = sum(r['params'] for r in counts['layers'] if r['path'].startswith('backbone/'))
    b = model.backbone
    size = self.input_size[0]
    return [f'SSDLite MobileNetV3-{b.variant.capitalize()} {float(b.width)} (reduced tail '
            f'{b.reduced_tail!r}, extra maps {"/".join(map(str, model.extra_widths))}) at '
            f'{size}x{size}, {self.num_classes - 1} classes + background, '
            f'{len(model.default_boxes(self.input_size))} default boxes: '
            f'{base.millions(counts["params"])} params (backbone {base.millions(backbone)}), '
            f'{base.millions(counts["macs"])} MACs per image']

  def loss_and_metrics(self, outputs, batch, axis_name=None):
    s = self.config.ssd
    return train_step.loss_and_metrics(outputs, batch, iou_threshold=s.match_iou,
                                       negatives_per_positive=s.negatives_per_positive,
                                       axis_name=axis_name)

  def _detect(self, outputs, image_size):
    """Batched `nms.Detections` of the raw outputs, with config.ssd's post-processing."""
    s = self.config.ssd
    return train_step.detect(outputs, image_size, max_detections=s.max_detections,
                             score_threshold=s.score_threshold, iou_threshold=s.nms_iou,
                             candidates_per_class=s.candidates_per_class)

  def eval_outputs(self, outputs, batch):
    """The batch's `nms.Detections` (N, D, ...), with config.ssd's post-processing."""
    return self._detect(outputs, batch['image'].shape[1:3])

  def eval_accumulator(self) -> base.EvalAccumulator:
    return _CocoAccumulator(self.input_size)

  def on_train_end(self, workdir: str, model, variables: dict) -> Optional[str]:
    """Writes workdir/predictions.png (process 0): the first eval images with their ground truth
    and the detections of `variables` (host arrays) scoring >= PICTURE_SCORE."""
    if jax.process_index() != 0:
      return None
    batch = next(iter(self.eval_iterator(global_batch_size=PICTURE_EXAMPLES, process_index=0,
                                         process_count=1)))
    keep = batch['mask'] > 0
    images = batch['image'][keep]
    predict = jax.jit(lambda v, x: self._detect(model.apply(v, x, train=False), x.shape[1:3]))
    found = jax.tree.map(np.asarray, predict(variables, jnp.asarray(images)))
    picture = visualize.grid(images, batch['boxes'][keep], batch['labels'][keep],
                             batch['valid'][keep], *found, class_names=self.class_names(),
                             score_threshold=PICTURE_SCORE)
    path = epath.Path(workdir) / PICTURE
    path.write_bytes(visualize.png(picture))
    logging.info('wrote %s (ground truth | detections >= %.1f, EMA weights)', path, PICTURE_SCORE)
    return str(path)

  def class_names(self) -> Tuple[str, ...]:
    """Names of classes 1..K (the dataset's, from its TFDS info)."""
    found = data_sources.builder(self.config.data)
    return tuple(found.info.features['objects']['label'].names)
