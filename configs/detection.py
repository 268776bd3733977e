r"""Object detection with SSDLite on MobileNetV3 (the paper's §6.3), through the same trainer.

  python main.py --config=configs/detection.py:dataset=coco/2017 --workdir=DIR \
      --config.data.data_dir=TFDS_DIR
  python main.py --config=configs/detection.py:dataset=coco/2017,variant=small,tail=none \
      --workdir=DIR --config.data.data_dir=TFDS_DIR --config.init_from=IMAGENET_WORKDIR
  python main.py --config=configs/detection.py:dataset=voc/2007 --workdir=DIR \
      --config.data.data_dir=TFDS_DIR
  (configs/det_demo.py: the embedded offline demo)

Datasets are read, never downloaded: prepare a TFDS one first (`tfds build coco/2017
--data_dir=TFDS_DIR`). `init_from` a classification run or variables checkpoint loads the
backbone arrays whose names and shapes match (extra layers and head start fresh).

Fields beyond configs/default.py's: `task`='detection'; `model` is MobileNetV3Backbone's options
(output_stride 32, reduced_tail); `head.extra_widths`; `ssd`: the loss's matching and mining, the
evaluation's post-processing (mnv3_jax/tasks/detection/task.py); `data` is the detection
pipeline's (mnv3_jax/tasks/detection/data.py; the dataset decides the classes). COCO and VOC use
SSDLite's 320x320 input and torchvision's reduced tail (its ssdlite320_mobilenet_v3_large: the
whole network trained from scratch, 600 epochs; its COCO weights import into this model);
`tail=official` is the paper's reduced model (Table 6, 3.22M params), `tail=none` the full
network (then start the backbone from ImageNet: --config.init_from). The schedules are RMSProp as
the classification recipe's, scaled to batch 256; they are starting points, not tuned (no
accelerator run exists yet).

Anchors (not measured here: no accelerator run exists yet):
  COCO test-dev, 320x320 (paper Table 6): Large 22.0 mAP (reduced tail 22.0, 3.22M params),
    Small 16.0 (reduced 16.1); MobileNetV2 22.1;
  torchvision ssdlite320_mobilenet_v3_large: 21.3 box mAP on COCO val2017 (its weights import:
    mnv3_jax/interop/torch_ssdlite.py);
  TF detection zoo ssdlite_mobilenet_v3_large / small: 22.6 / 15.4 mAP (COCO14 minival).
This module imports only ml_collections and `mnv3_jax.defaults` (tests/test_configs.py).
"""
import ml_collections

from configs import default, segmentation
from mnv3_jax import defaults

DATASETS = {
    'coco/2017': dict(image_size=320, num_epochs=600.0),
    'voc/2007': dict(image_size=320, num_epochs=300.0),
    'voc/2012': dict(image_size=320, num_epochs=300.0),
    'det_shapes': dict(image_size=128, num_epochs=30.0),
}
ARG_KEYS = {
    'dataset': ('data.dataset', str), 'variant': ('model.variant', str),
    'width': ('model.width', float), 'res': ('data.image_size', int),
    'tail': ('model.reduced_tail', str), 'batch': ('batch_size', int),
    'epochs': ('num_epochs', float), 'seed': ('seed', int),
}
DATA_TYPES = {'data_dir': str, 'eval_split': str, 'max_boxes': int}


def detection_config(dataset: str = 'det_shapes') -> ml_collections.ConfigDict:
  """configs/default.py's fields with detection's model, head, ssd and data for `dataset`."""
  if dataset not in DATASETS:
    raise ValueError(f'Unknown dataset {dataset!r}; allowed: {sorted(DATASETS)}.')
  preset = DATASETS[dataset]
  c = default.base_config()
  c.task = 'detection'
  c.model = segmentation.backbone_config()
  c.model.output_stride = 32
  c.model.reduced_tail = 'torchvision'
  c.head = ml_collections.ConfigDict(dict(extra_widths=(512, 256, 256, 128)))
  c.ssd = ml_collections.ConfigDict(dict(
      match_iou=0.5, negatives_per_positive=3.0, score_threshold=0.001, nms_iou=0.55,
      candidates_per_class=300, max_detections=100))
  c.data = default.options_config(defaults.DETECTION_DATA, DATA_TYPES)
  c.data.dataset = dataset
  c.data.image_size = preset['image_size']
  c.batch_size = 256
  c.num_epochs = preset['num_epochs']
  c.label_smoothing = 0.0
  c.optim.base_batch_size = 256
  c.optim.base_learning_rate = 0.004
  c.optim.warmup_epochs = 5.0
  c.optim.decay_epochs = 3.0
  c.optim.decay_rate = 0.97
  c.ema_decay = 0.9998
  c.eval_every_steps = 5000
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = default.parse_arg(arg, ARG_KEYS, words=())
  return default.apply_args(detection_config(args.get('dataset', 'det_shapes')), args, ARG_KEYS)
