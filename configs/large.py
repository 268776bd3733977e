r"""MobileNetV3-Large on ImageNet, the official recipe (expected top-1 75.2 at width 1.0).

  python main.py --config=configs/large.py --workdir=DIR
  python main.py --config=configs/large.py:width=0.75 --workdir=DIR      # 73.3 (official)
  python main.py --config=configs/large.py:minimalistic --workdir=DIR    # 72.3 (official)
"""
from configs import default, demo


def get_config(arg: str | None = None):
  args = default.parse_arg(arg)
  config = demo.demo_config() if 'demo' in args else default.base_config()
  config.model.variant = 'large'
  return default.apply_args(config, args)
