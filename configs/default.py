r"""The official MobileNetV3 ImageNet recipe; every field is a knob of `main.py`.

Defaults reproduce TF Model Garden's `imagenet_mobilenetv3small_tpu.yaml` (67.5% top-1 for Small)
and the paper's §6.1; docs/RECIPE.md has the table with sources. `config.model` and `config.data`
are `mnv3_jax.defaults.MODEL` / `.DATA` (each default written once, there); the training fields
(optimizer, schedule, EMA, label smoothing, length) are set below.

Launch (expected top-1: Small 67.4-67.5, Large 75.2):
  python main.py --config=configs/small.py --workdir=gs://BUCKET/mnv3_small
  python main.py --config=configs/large.py --workdir=gs://BUCKET/mnv3_large

Config strings (`--config=configs/small.py:width=0.75,res=192`) set the short keys of
`ARG_KEYS`; any field can also be set with `--config.field=value`. This module imports only
ml_collections and `mnv3_jax.defaults` (no jax, no TensorFlow: tests/test_configs.py).
"""
import ml_collections
from ml_collections import config_dict

from mnv3_jax import defaults

# Short keys of the config string -> (config path, type).
ARG_KEYS = {
    'variant': ('model.variant', str),
    'width': ('model.width', float),
    'res': ('data.image_size', int),
    'minimalistic': ('model.minimalistic', lambda s: {'true': True, 'false': False}[s.lower()]),
    'activation': ('model.activation', str),
    'batch': ('batch_size', int),
    'epochs': ('num_epochs', float),
    'dataset': ('data.dataset', str),
    'seed': ('seed', int),
}


def options_config(options: dict, types: dict | None = None) -> ml_collections.ConfigDict:
  """`options` (a dict of `mnv3_jax.defaults`) as a ConfigDict; None (unset): a placeholder of the
  field's type in `types` (str if not there)."""
  types = types or {}
  return ml_collections.ConfigDict({
      k: config_dict.placeholder(types.get(k, str)) if v is None else v
      for k, v in options.items()})


def base_config() -> ml_collections.ConfigDict:
  """All fields with the official recipe's values."""
  c = ml_collections.ConfigDict()
  # 'classification' (this recipe), 'segmentation' (configs/segmentation.py: LR-ASPP) or
  # 'detection' (configs/detection.py: SSDLite), each with its own model/head/data fields;
  # mnv3_jax/tasks/registry.py.
  c.task = 'classification'
  c.seed = 0
  c.model = options_config(defaults.MODEL)
  c.data = options_config(defaults.DATA)
  c.batch_size = 4096            # global, over all devices and hosts
  # Training BatchNorm statistics: 'global' (whole batch, all-reduced by XLA) or 'per_device'
  # (each device's shard, as TF's TPU trainer); see mnv3_jax/train/steps.py and docs/MULTIHOST.md.
  c.bn_stats = 'global'
  c.num_epochs = 1000.0
  c.num_train_steps = -1         # > 0 overrides num_epochs (tests, smoke runs)
  # Resuming a workdir with another batch_size than its config.json's is an error unless True;
  # then a warning says how steps per epoch and the restored step's epoch change.
  c.allow_batch_size_change = False
  # Start a fresh run from these weights (params and BN statistics; the optimizer starts anew):
  # a variables checkpoint (python -m mnv3_jax.interop.import_weights) or a training workdir. '' = none.
  c.init_from = ''
  c.optim = ml_collections.ConfigDict(dict(
      base_learning_rate=0.01, base_batch_size=4096, warmup_epochs=5.0,
      warmup_init_fraction=0.1, decay_rate=0.99, decay_epochs=3.0, staircase=True,
      rmsprop_decay=0.9, momentum=0.9, epsilon=0.002, weight_decay=1e-5,
      initial_scale=1.0))    # RMSProp accumulator start: TF1 1.0; Model Garden (Keras v2) 0.0
  # Quantization-aware training: 'none' (float) or 'qat' (TFLite int8 simulated in training:
  # mnv3_jax/compress/qat_model.py; configs/qat.py is the fine-tuning recipe). The BatchNorm
  # statistics and the activation ranges stop moving after these epochs; ranges move by
  # 1 - range_decay per step (torchvision's observers: 0.01).
  c.quant = 'none'
  c.qat = ml_collections.ConfigDict(dict(
      freeze_bn_epochs=3.0, freeze_ranges_epochs=4.0, range_decay=0.99))
  c.label_smoothing = 0.1
  c.ema_decay = 0.9999
  c.log_every_steps = 100
  c.eval_every_steps = 5000      # also at the end of training
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  c.keep_best = 1
  c.profile_first_step = 10      # clu Profile: the step of the first trace; -1 disables
  return c


def parse_arg(arg: str | None, keys: dict = ARG_KEYS, words: tuple = ('demo',)) -> dict:
  """Parses 'k=v,k=v' (and bare words, which become k=True) into a dict of strings; validates
  the keys: those of `keys` (key -> (field path, type)) and the flag words `words`."""
  out = {}
  for item in filter(None, (arg or '').split(',')):
    key, _, value = item.partition('=')
    if key not in keys and key not in words:
      raise ValueError(f'Unknown config-string key {key!r} in {arg!r}; allowed: '
                       f'{sorted([*keys, *words])}.')
    out[key] = value if value else 'true'
  return out


def apply_args(config: ml_collections.ConfigDict, args: dict,
               keys: dict = ARG_KEYS) -> ml_collections.ConfigDict:
  """Sets the config fields that the parsed config-string `args` name (`keys`: key -> (field
  path, type); flag words such as 'demo' are skipped)."""
  for key, value in args.items():
    if key not in keys:
      continue
    path, cast = keys[key]
    try:
      typed = cast(value)
    except (KeyError, ValueError) as e:
      raise ValueError(f'Bad value {value!r} for config-string key {key!r}.') from e
    *parents, leaf = path.split('.')
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = typed
  return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return apply_args(base_config(), parse_arg(arg))


def variant_config(variant: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """The recipe (or, with the word 'demo' in `arg`, configs/demo.py) for `variant`, then `arg`."""
  from configs import demo  # pylint: disable=import-outside-toplevel  (demo imports this module)
  args = parse_arg(arg)
  config = demo.demo_config() if 'demo' in args else base_config()
  config.model.variant = variant
  return apply_args(config, args)
