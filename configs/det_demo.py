r"""The embedded detection demo: SSDLite on MobileNetV3-Small at 128x128 on 'det_shapes'
(procedural scenes of circles, rectangles and triangles with their boxes, written on first use;
no download), through the same trainer, checkpoints and console as every run.

  python main.py --config=configs/det_demo.py --workdir=/tmp/det_demo

At the end it writes workdir/predictions.png (each eval image with its ground truth, and with the
EMA weights' detections). The README's "Detection" section has the measured result.
"""
from configs import default, detection


def demo_config():
  """Small 1.0, 128x128 inputs, batch 32, a short schedule with fast-settling BatchNorm."""
  c = detection.detection_config('det_shapes')
  c.model.variant = 'small'
  c.model.reduced_tail = 'none'
  c.model.bn_momentum = 0.9      # short runs: the recipe's decay leaves the statistics unsettled
  c.batch_size = 32
  c.num_epochs = 48.0            # 2976 steps of 32 over the 2000 training scenes
  c.optim.base_learning_rate = 0.005
  c.optim.base_batch_size = 32
  c.optim.warmup_epochs = 1.0
  c.optim.decay_epochs = 1.0
  c.optim.decay_rate = 0.95      # base rate 0.01 stalls (EMA AP 0.2% at step 500)
  c.ema_decay = 0.99
  c.log_every_steps = 100
  c.eval_every_steps = 500
  c.checkpoint_every_steps = 500
  c.profile_first_step = -1
  return c


def get_config(arg: str | None = None):
  return default.apply_args(demo_config(), default.parse_arg(arg, detection.ARG_KEYS, words=()),
                            detection.ARG_KEYS)
