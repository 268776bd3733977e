r"""Semantic segmentation with LR-ASPP on MobileNetV3 (the paper's §6.4), through the same trainer.

  python main.py --config=configs/segmentation.py:dataset=oxford_iiit_pet --workdir=DIR \
      --config.data.data_dir=TFDS_DIR
  python main.py --config=configs/segmentation.py:dataset=cityscapes,variant=small --workdir=DIR \
      --config.data.data_dir=TFDS_DIR --config.init_from=IMAGENET_WORKDIR
  python main.py --config=configs/segmentation.py:dataset=seg_folder,classes=5 --workdir=DIR \
      --config.data.data_dir=FOLDER
  (configs/seg_demo.py: the embedded offline demo)

Datasets are read, never downloaded: prepare a TFDS one first (`tfds build oxford_iiit_pet
--data_dir=TFDS_DIR`; Cityscapes needs its manual download, see
mnv3_jax/tasks/segmentation/data_sources.py). `init_from` a classification run or variables
checkpoint loads the backbone arrays whose names and shapes match (the head, and a reduced
tail's halved layers, start fresh).

Fields beyond configs/default.py's: `task`='segmentation'; `model` is MobileNetV3Backbone's
options (output_stride, reduced_tail; no classifier fields); `head` is LR-ASPP's; `data` is the
segmentation pipeline's (mnv3_jax/tasks/segmentation/data.py; the dataset decides the classes).
Per dataset (`DATASETS`): Cityscapes as the paper (output stride 16, the reduced tail, 128
filters, the paper's pooled gate, 768x768 crops, full-resolution 1024x2048 eval); the others as
torchvision's LR-ASPP (full tail, global gate), eval images fitted into 512x512. The schedules
are RMSProp as the classification recipe's, scaled to batch 32; they are starting points, not
tuned on these datasets (no accelerator run exists yet).

Anchors (not measured here: no accelerator run exists yet):
  Cityscapes test, output stride 16 (paper Table 8 / §6.4): Large 72.6, Small 69.4 mIoU;
  Cityscapes val, reduced tail, 128 filters (Table 7): Large 72.37, Small 68.38 mIoU;
  torchvision lraspp_mobilenet_v3_large: 57.9 mIoU / 91.2 pixel accuracy on COCO val2017 with
    the 20 VOC categories (its weights import: mnv3_jax/interop/torch_lraspp.py).
This module imports only ml_collections and `mnv3_jax.defaults` (tests/test_configs.py).
"""
import ml_collections

from configs import default
from mnv3_jax import defaults

# MobileNetV3Backbone's options: the classifier's, less its classifier fields.
_NOT_BACKBONE = ('num_classes', 'dropout_rate', 'last_stage')
_PAPER = dict(reduced_tail='official', pooling='paper')
_TORCHVISION = dict(reduced_tail='none', pooling='global')
DATASETS = {
    'cityscapes': dict(crop_size=768, eval_size=None, num_epochs=500.0, **_PAPER),
    'oxford_iiit_pet': dict(crop_size=256, eval_size=512, num_epochs=100.0, **_TORCHVISION),
    'scene_parse150': dict(crop_size=512, eval_size=512, num_epochs=100.0, **_TORCHVISION),
    'seg_folder': dict(crop_size=512, eval_size=512, num_epochs=100.0, **_TORCHVISION),
    'seg_shapes': dict(crop_size=64, eval_size=None, num_epochs=30.0, **_TORCHVISION),
}
ARG_KEYS = {
    'dataset': ('data.dataset', str), 'variant': ('model.variant', str),
    'width': ('model.width', float), 'crop': ('data.crop_size', int), 'batch': ('batch_size', int),
    'epochs': ('num_epochs', float), 'classes': ('data.num_classes', int), 'seed': ('seed', int),
}
DATA_TYPES = {'data_dir': str, 'eval_split': str, 'num_classes': int, 'eval_size': int}


def backbone_config() -> ml_collections.ConfigDict:
  """MobileNetV3Backbone's options at their defaults (the classifier's, less its classifier's)."""
  return ml_collections.ConfigDict(
      {k: v for k, v in defaults.MODEL.items() if k not in _NOT_BACKBONE})


def segmentation_config(dataset: str = 'seg_shapes') -> ml_collections.ConfigDict:
  """configs/default.py's fields with segmentation's model, head and data for `dataset`."""
  if dataset not in DATASETS:
    raise ValueError(f'Unknown dataset {dataset!r}; allowed: {sorted(DATASETS)}.')
  preset = DATASETS[dataset]
  c = default.base_config()
  c.task = 'segmentation'
  c.model = backbone_config()
  c.model.output_stride = 16
  c.model.reduced_tail = preset['reduced_tail']
  c.head = ml_collections.ConfigDict(dict(
      inter_channels=128, pooling=preset['pooling'], pool_size=(49, 49), pool_stride=(16, 20),
      low_tap='low', head_bn_epsilon=defaults.MODEL['bn_epsilon']))
  c.data = default.options_config(defaults.SEGMENTATION_DATA, DATA_TYPES)
  c.data.dataset = dataset
  c.data.crop_size = preset['crop_size']
  c.data.eval_size = preset['eval_size']
  c.batch_size = 32
  c.num_epochs = preset['num_epochs']
  c.label_smoothing = 0.0
  c.optim.base_batch_size = 32
  c.optim.base_learning_rate = 0.001
  c.optim.warmup_epochs = 1.0
  c.optim.decay_epochs = 1.0
  c.optim.decay_rate = 0.97
  c.ema_decay = 0.999
  c.eval_every_steps = 1000
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = default.parse_arg(arg, ARG_KEYS, words=())
  return default.apply_args(segmentation_config(args.get('dataset', 'seg_shapes')), args,
                            ARG_KEYS)
