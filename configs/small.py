r"""MobileNetV3-Small on ImageNet, the official recipe (expected top-1 67.4-67.5 at width 1.0).

  python main.py --config=configs/small.py --workdir=DIR
  python main.py --config=configs/small.py:width=0.75 --workdir=DIR      # 65.4 (official)
  python main.py --config=configs/small.py:demo --workdir=DIR            # embedded digits demo
"""
from configs import default


def get_config(arg: str | None = None):
  return default.variant_config('small', arg)
