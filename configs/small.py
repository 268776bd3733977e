r"""MobileNetV3-Small on ImageNet, the official recipe (expected top-1 67.4-67.5 at width 1.0).

  python main.py --config=configs/small.py --workdir=DIR
  python main.py --config=configs/small.py:width=0.75 --workdir=DIR      # 65.4 (official)
  python main.py --config=configs/small.py:demo --workdir=DIR            # embedded digits demo
"""
from configs import default, demo


def get_config(arg: str | None = None):
  args = default.parse_arg(arg)
  config = demo.demo_config() if 'demo' in args else default.base_config()
  config.model.variant = 'small'
  return default.apply_args(config, args)
