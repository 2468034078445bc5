"""Minimal safetensors reader/writer on NumPy memory maps (bfloat16 included, via ml_dtypes).

Reading is lazy: each tensor is a memmap view, so a host that only needs its shard of a parameter
(`jax.make_array_from_callback`) reads only those bytes. No pickle is ever involved.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Mapping

import ml_dtypes
import numpy as np

_DTYPES = {
    'F64': np.float64, 'F32': np.float32, 'F16': np.float16, 'BF16': ml_dtypes.bfloat16,
    'I64': np.int64, 'I32': np.int32, 'I16': np.int16, 'I8': np.int8, 'U8': np.uint8, 'BOOL': np.bool_,
}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


def read(path: str) -> dict[str, np.ndarray]:
  """Tensors of one .safetensors file, as read-only memmaps keyed by name."""
  with open(path, 'rb') as f:
    head = f.read(8)
    if len(head) != 8:
      raise ValueError(f'{path} is not a safetensors file (too short).')
    (n,) = struct.unpack('<Q', head)
    try:
      header = json.loads(f.read(n))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise ValueError(f'{path} is not a safetensors file (bad header: {e}).') from None
  header.pop('__metadata__', None)
  if not header:
    return {}
  data = np.memmap(path, dtype=np.uint8, mode='r', offset=8 + n)
  out = {}
  for name, info in header.items():
    if info['dtype'] not in _DTYPES:
      raise ValueError(f'{path}: tensor {name} has unsupported dtype {info["dtype"]}.')
    start, end = info['data_offsets']
    dt = np.dtype(_DTYPES[info['dtype']])
    out[name] = data[start:end].view(dt).reshape(info['shape'])
  return out


def write(path: str, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None):
  """Write tensors to one .safetensors file (atomically: a temp file, then rename)."""
  header, offset, arrays = {}, 0, []
  for name in sorted(tensors):
    a = np.ascontiguousarray(tensors[name])
    if a.dtype not in _NAMES:
      raise ValueError(f'Cannot write tensor {name} of dtype {a.dtype} to safetensors.')
    header[name] = {'dtype': _NAMES[a.dtype], 'shape': list(a.shape),
                    'data_offsets': [offset, offset + a.nbytes]}
    offset += a.nbytes
    arrays.append(a)
  if metadata:
    header['__metadata__'] = dict(metadata)
  blob = json.dumps(header, separators=(',', ':')).encode()
  blob += b' ' * (-len(blob) % 8)
  tmp = path + '.tmp'
  with open(tmp, 'wb') as f:
    f.write(struct.pack('<Q', len(blob)))
    f.write(blob)
    for a in arrays:
      f.write(a.tobytes())
  os.replace(tmp, path)
