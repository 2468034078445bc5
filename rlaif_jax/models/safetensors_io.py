"""safetensors files through the `safetensors` library: a lazy name -> NumPy array view of a file, and
an atomic writer. No pickle is ever involved.

The library reads and writes bfloat16 as NumPy arrays of `ml_dtypes.bfloat16` (safetensors >= 0.8,
with ml_dtypes imported, which this module does), so no hand-written reader is needed. Reading is
lazy: a tensor's bytes are read when it is asked for, one tensor at a time.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping

import numpy as np
import safetensors
import safetensors.numpy

from rlaif_jax.infra.errors import UserError


class SafetensorsFile(Mapping):
  """The tensors of one .safetensors file, each read from disk when indexed."""

  def __init__(self, path: str):
    self.path = path
    try:
      self._file = safetensors.safe_open(path, framework='np')
    except (safetensors.SafetensorError, OSError) as e:
      raise UserError(f'{path} is truncated or not a safetensors file ({e}); copy or download it '
                      f'again.') from None
    self._names = dict.fromkeys(self._file.keys())  # in file order

  def __getitem__(self, name: str) -> np.ndarray:
    if name not in self._names:
      raise KeyError(name)
    return self._file.get_tensor(name)

  def __contains__(self, name: object) -> bool:  # without reading the tensor
    return name in self._names

  def __iter__(self) -> Iterator[str]:
    return iter(self._names)

  def __len__(self) -> int:
    return len(self._names)

  def metadata(self) -> dict[str, str]:
    return dict(self._file.metadata() or {})


def read(path: str) -> SafetensorsFile:
  """Tensors of one .safetensors file, keyed by name (read lazily)."""
  return SafetensorsFile(path)


def to_bytes(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> bytes:
  """Tensors as the bytes of one .safetensors file."""
  arrays = {name: np.ascontiguousarray(tensors[name]) for name in sorted(tensors)}
  return safetensors.numpy.save(arrays, metadata=dict(metadata) if metadata else None)


def write(path: str, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None):
  """Write tensors to one local .safetensors file (atomically: a temp file, then rename)."""
  tmp = path + '.tmp'
  with open(tmp, 'wb') as f:
    f.write(to_bytes(tensors, metadata))
  os.replace(tmp, path)
