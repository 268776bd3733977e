"""Image classification, the trainer's default task: MobileNetV3 (or its QAT form) on
`mnv3_jax.data.input_pipeline` batches, smoothed softmax cross-entropy, top-1/top-5.

Training metrics: loss, top1, top5 (means over the global batch); eval results: loss, top1, top5
over the real examples and their count; the best checkpoint is the one with the best EMA top-1.
"""
from typing import Dict, List, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import optax
from clu import metrics as clu_metrics

from mnv3_jax import config_fields as cf
from mnv3_jax.compress.qat_model import QATMobileNetV3
from mnv3_jax.data import input_pipeline
from mnv3_jax.model import MobileNetV3
from mnv3_jax.model import summary
from mnv3_jax.tasks import base

AUTOTUNE = -1   # data.num_parallel_calls: tf.data.AUTOTUNE

# The data fields (model.* are MobileNetV3's own checks, named as model.* by `check_model`).
FIELDS = (
    ('data.dataset', "a TFDS name, 'image_folder' or 'digits'", cf.name),
    ('data.data_dir', 'a directory, or None (the TFDS default)',
     lambda v: v is None or isinstance(v, str)),
    ('data.train_split', 'a split name', cf.name),
    ('data.eval_split', 'a split name', cf.name),
    ('data.folder_holdout_fraction', 'a number in [0, 1)', cf.real(lambda v: 0 <= v < 1)),
    ('data.image_size', 'an integer >= 32', cf.integer(lambda v: v >= 32)),
    ('data.crop_area_range', '(lo, hi) with 0 < lo <= hi <= 1',
     cf.pair(lambda lo, hi: 0 < lo <= hi <= 1)),
    ('data.aspect_ratio_range', '(lo, hi) with 0 < lo <= hi, finite',
     cf.pair(lambda lo, hi: 0 < lo <= hi)),
    ('data.random_flip', 'True or False', cf.boolean),
    ('data.eval_crop_fraction', 'a number in (0, 1]', cf.real(lambda v: 0 < v <= 1)),
    ('data.shuffle_buffer', 'an integer >= 1', cf.integer(lambda v: v >= 1)),
    ('data.cache', 'True or False', cf.boolean),
    ('data.num_parallel_calls', f'an integer >= 1, or {AUTOTUNE} (AUTOTUNE)',
     cf.integer(lambda v: v == AUTOTUNE or v >= 1)),
)


def topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """(N,) float32: 1 where the label is among the k highest logits."""
  topk = jax.lax.top_k(logits, k)[1]
  return jnp.any(topk == labels[:, None], axis=-1).astype(jnp.float32)


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float) -> jax.Array:
  """(N,) smoothed softmax cross-entropy; labels int (N,)."""
  num_classes = logits.shape[-1]
  targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


TrainMetrics = base.train_metrics('top1', 'top5')


@flax.struct.dataclass
class EvalMetrics(clu_metrics.Collection):
  loss: clu_metrics.Average.from_output('loss')
  top1: clu_metrics.Average.from_output('top1')
  top5: clu_metrics.Average.from_output('top5')


def check_model(options: dict) -> MobileNetV3:
  """MobileNetV3(**options), its errors naming the field as config.model's (model.width, ...)."""
  return cf.construct(MobileNetV3, options, 'model')


def _results(total: EvalMetrics) -> Dict[str, float]:
  out = {k: float(v) for k, v in total.compute().items()}
  out['count'] = int(total.top1.count)
  return out


class Classification(base.Task):
  """MobileNetV3 classification (module docstring); `label_smoothing` from the config."""
  name = 'classification'
  report = base.ReportNames('top1', 'top1', 'top1', 'top1')
  train_metrics = TrainMetrics
  pipeline = input_pipeline

  def __init__(self, config=None, label_smoothing: Optional[float] = None):
    super().__init__(config)
    self.label_smoothing = (config.label_smoothing if label_smoothing is None
                            else label_smoothing)

  def check_config(self) -> input_pipeline.DatasetInfo:
    c = self.config
    cf.check_fields(c, FIELDS)
    input_pipeline.check_config(c.data)   # the data module's own checks (fields added later too)
    model = check_model(c.model.to_dict())   # every model option ('auto' dtype too)
    if c.quant == 'qat':
      QATMobileNetV3.from_model(model).check()
    info = input_pipeline.get_dataset_info(c.data)
    if info.num_classes != c.model.num_classes:
      raise ValueError(f'model.num_classes {c.model.num_classes} does not match dataset '
                       f'{c.data.dataset!r}, which has {info.num_classes} classes; set '
                       f'--config.model.num_classes={info.num_classes}.')
    return info

  def build_model(self, info=None):
    """MobileNetV3(**config.model), or its QAT form (config.quant == 'qat')."""
    del info   # config.model.num_classes, checked against it
    model = MobileNetV3(**self.config.model)
    if self.config.quant == 'qat':
      return QATMobileNetV3.from_model(model, self.config.qat.range_decay)
    return model

  def init_image_size(self) -> Tuple[int, int]:
    return (self.config.data.image_size,) * 2

  def eval_split(self) -> str:
    return self.config.data.eval_split

  def header_lines(self, model, info) -> List[str]:
    model = getattr(model, 'float_model', model)
    size = self.config.data.image_size
    counts = summary.summarize(model, (size, size))
    variant = f'MobileNetV3-{model.variant.capitalize()} {float(model.width)}'
    if model.minimalistic:
      variant += ' minimalistic'
    return [f'{variant} at {size}x{size}, {model.num_classes} classes: '
            f'{base.millions(counts["params"])} params, '
            f'{base.millions(counts["macs"])} MACs per image']

  def loss_and_metrics(self, outputs, batch, axis_name=None):
    del axis_name   # shards are of equal size: the mean of their means is the batch's
    labels = batch['label']
    loss = cross_entropy(outputs, labels, self.label_smoothing).mean()
    return loss, {'top1': topk_correct(outputs, labels, 1).mean(),
                  'top5': topk_correct(outputs, labels, min(5, outputs.shape[-1])).mean()}

  def eval_outputs(self, outputs, batch) -> EvalMetrics:
    mask = batch['mask'].astype(jnp.float32)
    return EvalMetrics.single_from_model_output(
        loss=cross_entropy(outputs, batch['label'], 0.0), mask=mask,
        top1=topk_correct(outputs, batch['label'], 1),
        top5=topk_correct(outputs, batch['label'], min(5, outputs.shape[-1])))

  def eval_accumulator(self) -> base.EvalAccumulator:
    return base.CollectionAccumulator(_results)
