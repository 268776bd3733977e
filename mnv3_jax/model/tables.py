"""The paper's block tables as the official TF-slim / Keras code builds them: one row per bneck.

Small's last bnecks and head are corrected to the code (no SE on the 576 conv, a 1024-wide
penultimate layer). Expansion widths are written at width 1.0; `MobileNetV3` applies them as
ratios of the block's actual input width, rounded with `make_divisible`, as the official code does.
"""
from typing import NamedTuple


class Bneck(NamedTuple):
  """One row of the paper's table: a bneck (inverted residual) block at width 1.0."""
  kernel: int      # depthwise kernel size (3 or 5)
  exp: int         # expansion width ("exp size")
  out: int         # output width ("#out")
  se: bool         # squeeze-and-excite after the depthwise conv
  act: str         # 'RE' (ReLU) or 'HS' (the `activation` option, h-swish by default)
  stride: int


RE, HS = 'RE', 'HS'

#                 k   exp  out   SE     NL  s
LARGE = (
    Bneck(3, 16, 16, False, RE, 1),
    Bneck(3, 64, 24, False, RE, 2),
    Bneck(3, 72, 24, False, RE, 1),
    Bneck(5, 72, 40, True, RE, 2),
    Bneck(5, 120, 40, True, RE, 1),
    Bneck(5, 120, 40, True, RE, 1),
    Bneck(3, 240, 80, False, HS, 2),
    Bneck(3, 200, 80, False, HS, 1),
    Bneck(3, 184, 80, False, HS, 1),
    Bneck(3, 184, 80, False, HS, 1),
    Bneck(3, 480, 112, True, HS, 1),
    Bneck(3, 672, 112, True, HS, 1),
    Bneck(5, 672, 160, True, HS, 2),
    Bneck(5, 960, 160, True, HS, 1),
    Bneck(5, 960, 160, True, HS, 1),
)

SMALL = (
    Bneck(3, 16, 16, True, RE, 2),
    Bneck(3, 72, 24, False, RE, 2),
    Bneck(3, 88, 24, False, RE, 1),
    Bneck(5, 96, 40, True, HS, 2),
    Bneck(5, 240, 40, True, HS, 1),
    Bneck(5, 240, 40, True, HS, 1),
    Bneck(5, 120, 48, True, HS, 1),
    Bneck(5, 144, 48, True, HS, 1),
    Bneck(5, 288, 96, True, HS, 2),
    Bneck(5, 576, 96, True, HS, 1),
    Bneck(5, 576, 96, True, HS, 1),
)

TABLES = {'large': LARGE, 'small': SMALL}
STEM_FILTERS = 16           # input width of the first bneck in the tables
HEAD_EXPANSION = 6          # the last 1x1 conv: 6x the last bneck (960 / 576)
LAST_POINT = {'large': 1280, 'small': 1024}   # the pooled 1x1 conv before the classifier
SPINDLE_RATIO = 2           # 'v2' last stage: project to 2x the last bneck (Large: 320)
