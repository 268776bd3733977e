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
from ml_collections import config_dict

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
    'dataset': str, 'variant': str, 'width': float, 'crop': int, 'batch': int, 'epochs': float,
    'classes': int, 'seed': int,
}
ARG_PATHS = {'variant': 'model.variant', 'width': 'model.width', 'crop': 'data.crop_size',
             'batch': 'batch_size', 'epochs': 'num_epochs', 'classes': 'data.num_classes',
             'seed': 'seed'}


def placeheld(options: dict, types: dict) -> ml_collections.ConfigDict:
  """`options` as a ConfigDict; a None value becomes a placeholder of its type in `types`."""
  return ml_collections.ConfigDict({k: config_dict.placeholder(types[k]) if v is None else v
                                    for k, v in options.items()})


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
  c.data = placeheld(defaults.SEGMENTATION_DATA, {'data_dir': str, 'eval_split': str,
                                                  'num_classes': int, 'eval_size': int})
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


def parse_arg(arg: str | None, keys: dict = ARG_KEYS) -> dict:
  """'k=v,k=v' -> {k: typed v}; keys of `keys` (key -> type)."""
  out = {}
  for item in filter(None, (arg or '').split(',')):
    key, _, value = item.partition('=')
    if key not in keys:
      raise ValueError(f'Unknown config-string key {key!r} in {arg!r}; allowed: '
                       f'{sorted(keys)}.')
    try:
      out[key] = keys[key](value)
    except ValueError as e:
      raise ValueError(f'Bad value {value!r} for config-string key {key!r}.') from e
  return out


def apply_args(c: ml_collections.ConfigDict, args: dict,
               paths: dict = ARG_PATHS) -> ml_collections.ConfigDict:
  """Sets the fields (`paths`: key -> dotted field) the parsed config-string `args` name (but
  'dataset', which presets)."""
  for key, value in args.items():
    if key in paths:
      *parents, leaf = paths[key].split('.')
      node = c
      for p in parents:
        node = node[p]
      node[leaf] = value
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg)
  return apply_args(segmentation_config(args.get('dataset', 'seg_shapes')), args)
