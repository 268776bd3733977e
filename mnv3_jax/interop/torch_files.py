"""Reading PyTorch weight files (`.safetensors`, `.pth`, `.pt`, `.bin`) as state dicts.

Files are never unpickled: `.safetensors` is read with the `safetensors` package, `.pth`/`.pt`/
`.bin` with `torch.load(weights_only=True)`, which refuses any pickle that would build objects
other than tensors and plain containers (so a malicious file cannot run code).
"""
import os
import pickle
import re
from typing import Any, Dict, Mapping, Optional

_TORCH_SUFFIXES = ('.pth', '.pt', '.bin')
_WRAPPER_KEYS = ('state_dict', 'model', 'model_state_dict')


def load_state_dict(path, key: Optional[str] = None) -> Dict[str, Any]:
  """Reads the weights of a `.safetensors`, `.pth`, `.pt` or `.bin` file without unpickling code.

  key: the entry holding the state dict in a training checkpoint (e.g. 'state_dict_ema'); by
  default the file itself, or its 'state_dict' / 'model' / 'model_state_dict' entry. A leading
  'module.' (DistributedDataParallel) is removed. Returns name -> tensor or array.
  """
  path = os.fspath(path)
  if not path.endswith(('.safetensors', *_TORCH_SUFFIXES)):
    raise ValueError(f'Unknown weights file type {path!r}; allowed: .safetensors, '
                     f'{", ".join(_TORCH_SUFFIXES)}.')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'No weights file at {path!r}.')
  if path.endswith('.safetensors'):
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    try:
      content = load_file(path)
    except Exception as e:  # pylint: disable=broad-except  (safetensors' own error type)
      raise _damaged(path, 'safetensors.numpy.save_file', e) from e
  else:
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError(f'Reading {path!r} needs PyTorch (pip install torch); or save the '
                        'weights as .safetensors, which needs only `safetensors`.') from e
    try:
      content = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
      raise ValueError(
          f'Refused {path!r}: it is not a plain weights file; loading it would run code or build '
          f'objects other than tensors (torch.load(weights_only=True) says: '
          f'{str(e).splitlines()[0][:300]}).') from None
    # A damaged file fails as RuntimeError (zip), EOFError, KeyError, ... by where it breaks.
    except Exception as e:  # pylint: disable=broad-except
      raise _damaged(path, 'torch.save', e) from e
  return _unwrap(content, path, key)


def _damaged(path: str, writer: str, error: Exception) -> ValueError:
  first = (str(error).splitlines() or [''])[0]
  reason = re.split(r'(?<=\.) ', first)[0][:300] or type(error).__name__   # its first sentence
  return ValueError(f'Cannot read {path!r}: it is damaged or not a weights file ({reason}); '
                    f'allowed: a complete file written by {writer}.')


def _unwrap(content: Any, path: str, key: Optional[str]) -> Dict[str, Any]:
  if not isinstance(content, Mapping):
    raise ValueError(f'{path!r} holds a {type(content).__name__}, not a state dict.')
  if key is not None:
    if key not in content:
      raise ValueError(f'{path!r} has no entry {key!r}; it has {sorted(content)[:20]}.')
    content = content[key]
  elif not all(hasattr(v, 'shape') for v in content.values()):
    wrapped = [k for k in _WRAPPER_KEYS if isinstance(content.get(k), Mapping)]
    if not wrapped:
      raise ValueError(f'{path!r} is not a state dict and has none of the entries '
                       f'{list(_WRAPPER_KEYS)}; its entries: {sorted(content)[:20]}. Pass key=.')
    content = content[wrapped[0]]
  if content and all(name.startswith('module.') for name in content):
    content = {name[len('module.'):]: value for name, value in content.items()}
  return dict(content)
