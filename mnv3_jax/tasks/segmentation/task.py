"""Semantic segmentation through the trainer: LR-ASPP on a MobileNetV3 backbone (lraspp.py),
the segmentation input pipeline (data.py), per-pixel cross-entropy, mIoU from an exact confusion
matrix (metrics.py).

Config (`configs/segmentation.py` has every field):
  task    'segmentation'
  model   MobileNetV3Backbone's options (variant, width, ..., output_stride, reduced_tail)
  head    LR-ASPP's: inter_channels, pooling, pool_size, pool_stride, low_tap, head_bn_epsilon
  data    data.py's fields; the dataset decides the number of classes (config.data.num_classes
          for a seg_folder)

Training loss: softmax cross-entropy per pixel (label smoothing as config.label_smoothing), the
mean over the pixels of the global batch whose label is a class (ignore_label pixels count
nowhere); train metrics: loss, pixel_accuracy (of the same pixels). Evaluation, at the eval
images' full resolution (or data.eval_size): loss (per scored pixel), miou, pixel_accuracy,
mean_accuracy from one confusion matrix (exact integer counts over devices and hosts), and count
(images). The best checkpoint is the one with the best EMA mIoU. `init_from` a classifier (a
variables checkpoint or a classification workdir) loads the backbone arrays whose names and
shapes match; the head starts fresh.
"""
import functools
from typing import Dict, List, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from clu import metrics as clu_metrics
from etils import epath

from mnv3_jax import config_fields as cf
from mnv3_jax.model.backbone import MobileNetV3Backbone
from mnv3_jax.tasks import base
from mnv3_jax.tasks.segmentation import data, data_sources, lraspp, metrics, summary, visualize

PICTURE = 'predictions.png'   # in the workdir, written at the end of training
PICTURE_EXAMPLES = 4

_positive_pair = cf.pair(lambda a, b: True, cf.integer(lambda v: v >= 1))
FIELDS = (
    ('head.inter_channels', 'an integer >= 1', cf.integer(lambda v: v >= 1)),
    ('head.pooling', f'one of {list(lraspp.POOLINGS)}', lambda v: v in lraspp.POOLINGS),
    ('head.pool_size', '(height, width), integers >= 1', _positive_pair),
    ('head.pool_stride', '(height, width), integers >= 1', _positive_pair),
    ('head.low_tap', "a backbone tap name ('low', 'block_<i>', ...)", cf.name),
    ('head.head_bn_epsilon', 'a finite number > 0', cf.real(lambda v: v > 0)),
    ('quant', "'none' (quantization-aware training is classification's)", lambda v: v == 'none'),
    ('data.crop_size', 'an integer >= 32 (the model needs 32x32 inputs or more)',
     cf.integer(lambda v: v >= 32)),
    ('data.eval_size', 'None (full resolution) or an integer >= 32',
     lambda v: v is None or cf.integer(lambda s: s >= 32)(v)),
)


TrainMetrics = base.train_metrics('pixel_accuracy')


@flax.struct.dataclass
class EvalTotals:
  """One eval batch's (or a pass's) sums: per-pixel loss, confusion matrix, real images."""
  loss: clu_metrics.Average
  confusion: metrics.ConfusionMatrix
  images: clu_metrics.Average    # total: real images (mask sum)

  def merge(self, other: 'EvalTotals') -> 'EvalTotals':
    return EvalTotals(self.loss.merge(other.loss), self.confusion.merge(other.confusion),
                      self.images.merge(other.images))


def _results(total: EvalTotals) -> Dict[str, float]:
  found = total.confusion.compute()
  return {'loss': float(total.loss.compute()), 'miou': found['miou'],
          'pixel_accuracy': found['pixel_accuracy'], 'mean_accuracy': found['mean_accuracy'],
          'count': int(round(float(jax.device_get(total.images.total))))}


def _global_mean(total: jax.Array, count: jax.Array, axis_name: Optional[str]) -> jax.Array:
  """total / count over the global batch; per device (axis_name) the value whose pmean is that."""
  if axis_name is None:
    return total / jnp.maximum(count, 1.0)
  devices = jax.lax.psum(1, axis_name)
  return devices * total / jnp.maximum(jax.lax.psum(count, axis_name), 1.0)


class Segmentation(base.Task):
  """LR-ASPP MobileNetV3 semantic segmentation (module docstring)."""
  name = 'segmentation'
  report = base.ReportNames('pixel_accuracy', 'pixel acc', 'miou', 'mIoU')
  train_metrics = TrainMetrics
  init_from_scope = 'backbone'
  pipeline = data

  @functools.cached_property
  def num_classes(self) -> int:
    return data_sources.num_classes(self.config.data)

  @property
  def ignore_label(self) -> int:
    return int(self.config.data.ignore_label)

  def check_config(self) -> data.DatasetInfo:
    c = self.config
    data.check_config(c.data)
    cf.check_fields(c, FIELDS)
    backbone = cf.construct(MobileNetV3Backbone, c.model.to_dict(), 'model')
    try:
      backbone.resolve_tap(c.head.low_tap)
    except ValueError as e:
      raise ValueError(f'Invalid head.low_tap {c.head.low_tap!r}: {e}') from e
    return data.get_dataset_info(c.data)

  def build_model(self, info=None) -> lraspp.LRASPPMobileNetV3:
    head = self.config.head.to_dict()
    head.update(pool_size=tuple(head['pool_size']), pool_stride=tuple(head['pool_stride']))
    return lraspp.LRASPPMobileNetV3(MobileNetV3Backbone(**self.config.model),
                                    num_classes=self.num_classes, **head)

  def init_image_size(self) -> Tuple[int, int]:
    return (self.config.data.crop_size,) * 2

  def header_lines(self, model, info) -> List[str]:
    size = self.config.data.crop_size
    counts = summary.summarize(model, (size, size))
    b = model.backbone
    head = self.config.head
    return [f'LR-ASPP MobileNetV3-{b.variant.capitalize()} {float(b.width)} (output stride '
            f'{b.output_stride}, reduced tail {b.reduced_tail!r}, {head.inter_channels} filters, '
            f'{head.pooling} gate) at {size}x{size} crops, {self.num_classes} classes: '
            f'{base.millions(counts["total"]["params"])} params (backbone '
            f'{base.millions(counts["backbone"]["params"])}), '
            f'{base.millions(counts["total"]["macs"])} MACs per crop']

  def _pixel_loss(self, logits: jax.Array, labels: jax.Array):
    """(per-pixel cross-entropy, valid) (B, H, W): valid = the label is a class."""
    valid = (labels != self.ignore_label) & (labels >= 0) & (labels < self.num_classes)
    safe = jnp.where(valid, labels, 0)
    smoothing = self.config.label_smoothing
    if smoothing:
      targets = optax.smooth_labels(jax.nn.one_hot(safe, logits.shape[-1]), smoothing)
      ce = optax.softmax_cross_entropy(logits, targets)
    else:
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, safe)
    return jnp.where(valid, ce, 0.0), valid

  def loss_and_metrics(self, outputs, batch, axis_name=None):
    ce, valid = self._pixel_loss(outputs, batch['label'])
    count = valid.sum().astype(jnp.float32)
    correct = ((jnp.argmax(outputs, -1) == batch['label']) & valid).sum().astype(jnp.float32)
    return (_global_mean(ce.sum(), count, axis_name),
            {'pixel_accuracy': _global_mean(correct, count, axis_name)})

  def eval_outputs(self, outputs, batch) -> EvalTotals:
    labels, mask = batch['label'], batch['mask']
    ce, valid = self._pixel_loss(outputs, labels)
    valid &= (mask != 0)[:, None, None]
    confusion = metrics.ConfusionMatrix.configure(self.num_classes, self.ignore_label)
    return EvalTotals(
        loss=clu_metrics.Average(total=jnp.where(valid, ce, 0.0).sum(),
                                 count=valid.sum(dtype=jnp.int32)),
        confusion=confusion.from_model_output(labels=labels,
                                              predictions=jnp.argmax(outputs, -1), mask=mask),
        images=clu_metrics.Average(total=mask.astype(jnp.float32).sum(),
                                   count=jnp.asarray(mask.shape[0], jnp.int32)))

  def eval_accumulator(self) -> base.EvalAccumulator:
    return base.CollectionAccumulator(_results)

  def on_train_end(self, workdir: str, model, variables: dict) -> Optional[str]:
    """Writes workdir/predictions.png (process 0): the first eval images, ground truth, the
    predictions of `variables` (host arrays; run on this process's first device)."""
    if jax.process_index() != 0:
      return None
    batch = next(iter(self.eval_iterator(global_batch_size=PICTURE_EXAMPLES, process_index=0,
                                         process_count=1)))
    keep = batch['mask'] > 0
    predict = jax.jit(lambda v, x: jnp.argmax(model.apply(v, x, train=False), -1))
    predictions = np.asarray(predict(variables, batch['image'][keep]))
    picture = visualize.grid(batch['image'][keep], batch['label'][keep], predictions,
                             self.num_classes)
    path = epath.Path(workdir) / PICTURE
    path.write_bytes(visualize.png_bytes(picture))
    logging.info('wrote %s (image | ground truth | prediction, EMA weights)', path)
    return str(path)
