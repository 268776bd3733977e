r"""The embedded segmentation demo: LR-ASPP MobileNetV3-Small on 'seg_shapes' (procedural 64x64
scenes of disks, rectangles and triangles, written on first use; no download), through the same
trainer, checkpoints and console as every run.

  python main.py --config=configs/seg_demo.py --workdir=/tmp/seg_demo

At the end it writes workdir/predictions.png (image | ground truth | prediction of the EMA
weights on the first eval images). The README's "Segmentation" section has the measured result.
"""
from configs import default, segmentation


def demo_config():
  """Small, output stride 16, LR-ASPP with 128 filters; 64x64 crops, a short schedule."""
  c = segmentation.segmentation_config('seg_shapes')
  c.model.variant = 'small'
  c.model.bn_momentum = 0.9      # short runs: the recipe's decay leaves the statistics unsettled
  c.data.scale_range = (0.75, 1.5)
  c.batch_size = 32
  c.num_epochs = 12.0
  c.optim.base_learning_rate = 0.005
  c.optim.base_batch_size = 32
  c.optim.warmup_epochs = 1.0
  c.optim.decay_epochs = 1.0
  c.optim.decay_rate = 0.9
  c.ema_decay = 0.99
  c.log_every_steps = 50
  c.eval_every_steps = 250
  c.checkpoint_every_steps = 250
  c.profile_first_step = -1
  return c


def get_config(arg: str | None = None):
  return default.apply_args(demo_config(),
                            default.parse_arg(arg, segmentation.ARG_KEYS, words=()),
                            segmentation.ARG_KEYS)
