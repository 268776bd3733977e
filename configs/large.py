r"""MobileNetV3-Large on ImageNet, the official recipe (expected top-1 75.2 at width 1.0).

  python main.py --config=configs/large.py --workdir=DIR
  python main.py --config=configs/large.py:width=0.75 --workdir=DIR      # 73.3 (official)
  python main.py --config=configs/large.py:minimalistic --workdir=DIR    # 72.3 (official)
"""
from configs import default


def get_config(arg: str | None = None):
  return default.variant_config('large', arg)
