"""torchvision's and timm's model code (reference MobileNetV3s) without torchvision's C++ ops.

PyPI's torchvision wheels are built against the CUDA torch: beside the CPU-only torch wheel their
C++ ops library fails to register ('operator torchvision::nms does not exist'), which breaks
`import torchvision` and, through it, `import timm`. The model code of both is pure Python, so
the package is put into sys.modules without running its `__init__`; the submodules the models
need then import normally. Used by the tests' references and benchmarks/workers.py; nothing here
downloads weights.
"""
import importlib.util
import sys
import types


def _stub_torchvision() -> None:
  if 'torchvision' in sys.modules:
    return
  spec = importlib.util.find_spec('torchvision')
  if spec is None:
    raise ImportError('torchvision is not installed (pip install torchvision)')
  package = types.ModuleType('torchvision')
  package.__path__ = list(spec.submodule_search_locations)
  package.__spec__ = spec
  sys.modules['torchvision'] = package


def torchvision_model(variant: str, num_classes: int = 1000):
  """torchvision.models.mobilenet_v3_{variant}(num_classes=...), randomly initialised.

  variant: 'small' or 'large'. Returns a torch.nn.Module in training mode.
  """
  if variant not in ('small', 'large'):
    raise ValueError(f"Unknown variant {variant!r}; allowed: 'small', 'large'.")
  _stub_torchvision()
  from torchvision.models import mobilenetv3  # pylint: disable=g-import-not-at-top
  return getattr(mobilenetv3, f'mobilenet_v3_{variant}')(num_classes=num_classes)


def timm_model(name: str, num_classes: int = 1000):
  """timm.create_model(name, num_classes=...), randomly initialised (nothing is downloaded)."""
  _stub_torchvision()
  import timm  # pylint: disable=g-import-not-at-top
  return timm.create_model(name, pretrained=False, num_classes=num_classes)
