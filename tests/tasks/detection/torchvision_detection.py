"""torchvision's detection code (references for the SSDLite tests) without its C++ ops.

`tests.interop.torch_models` puts torchvision into sys.modules without running its `__init__`
(its C++ ops library does not load beside the CPU torch wheel); the detection modules are pure
Python and import normally after that. Nothing here downloads weights.
"""
import torch

from tests.interop import torch_models

torch_models._stub_torchvision()  # pylint: disable=protected-access
import torchvision  # pylint: disable=g-import-not-at-top,wrong-import-position  (the stub)
if not hasattr(torchvision, '_is_tracing'):   # what torchvision's __init__ would define
  torchvision._is_tracing = lambda: torch._C._get_tracing_state() is not None  # pylint: disable=protected-access
torch.set_num_threads(1)   # see tests/interop/torch_reference.py: a shared 2-core CPU

# pylint: disable=g-import-not-at-top,wrong-import-position,unused-import
from torchvision.models.detection import _utils as det_utils
from torchvision.models import mobilenetv3
from torchvision.models.detection import anchor_utils, ssd, ssdlite
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import boxes as box_ops
