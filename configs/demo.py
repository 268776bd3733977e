r"""The embedded demo: MobileNetV3-Small on scikit-learn's digits (1797 8x8 images, shipped in
the wheel, no download), through the same tfds pipeline, trainer and checkpoints as ImageNet.

  python main.py --config=configs/demo.py --workdir=/tmp/mnv3_demo
  (same as --config=configs/small.py:demo)
"""
from configs import default


def demo_config():
  """The recipe scaled down to a 2-core CPU: small images, short schedule, no flips."""
  c = default.base_config()
  c.model.variant = 'small'
  c.model.num_classes = 10
  c.model.dropout_rate = 0.1
  c.model.bn_momentum = 0.9      # the recipe's decay needs ~1000s of steps for the stats to settle
  c.data.dataset = 'digits'
  c.data.eval_split = 'test'
  c.data.image_size = 32
  c.data.crop_area_range = (0.6, 1.0)
  c.data.random_flip = False
  c.data.eval_crop_fraction = 1.0
  c.batch_size = 64
  c.num_epochs = 30.0
  c.optim.base_learning_rate = 0.002
  c.optim.base_batch_size = 64
  c.optim.warmup_epochs = 1.0
  c.optim.decay_epochs = 1.0
  c.optim.decay_rate = 0.9
  c.ema_decay = 0.99
  c.log_every_steps = 50
  c.eval_every_steps = 200
  c.checkpoint_every_steps = 200
  c.profile_first_step = -1
  return c


def get_config(arg: str | None = None):
  args = default.parse_arg(arg)
  return default.apply_args(demo_config(), args)
