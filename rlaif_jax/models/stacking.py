"""Per-layer weight names <-> the stacked parameters of a scanned model (`scan_layers`).

Checkpoint files (safetensors, GGUF) and exports name one tensor per layer (`layers/3/attn/q`); a
scanned model holds one [L, ...] parameter per kind (`blocks/attn/q`). These views translate host
weights either way without copying the whole model: a stacked weight reads only the layers a
device's slice covers, when that slice is asked for.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Iterator

import numpy as np

STACKED = 'blocks/'


class StackedWeight:
  """A lazy [L, ...] host array made of per-layer arrays; `w[idx]` reads only the layers in idx."""

  def __init__(self, weights: Mapping[str, Any], names: list[str]):
    self._weights, self._names = weights, names
    first = np.asarray(weights[names[0]])
    self.shape, self.dtype = (len(names), *first.shape), first.dtype

  def __getitem__(self, idx) -> np.ndarray:
    idx = idx if isinstance(idx, tuple) else (idx,)
    layers, rest = (idx[0] if idx else slice(None)), idx[1:]
    picked = range(len(self._names))[layers]
    if isinstance(picked, int):
      return np.asarray(self._weights[self._names[picked]])[rest]
    return np.stack([np.asarray(self._weights[self._names[i]])[rest] for i in picked])

  def __array__(self, dtype=None, copy=None):
    out = self[:]
    return out if dtype is None else out.astype(dtype)


class StackedView(Mapping):
  """Per-layer weights (`layers/{i}/...` names) seen as a scanned model's (`blocks/...`)."""

  def __init__(self, weights: Mapping[str, Any], num_layers: int):
    self._weights, self._layers = weights, num_layers
    kinds = sorted({n.split('/', 2)[2] for n in weights if n.startswith('layers/0/')})
    self._names = [n for n in weights if not n.startswith('layers/')] + [STACKED + k for k in kinds]

  def __getitem__(self, name: str):
    if not name.startswith(STACKED):
      return self._weights[name]
    kind = name[len(STACKED):]
    return StackedWeight(self._weights, [f'layers/{i}/{kind}' for i in range(self._layers)])

  def __contains__(self, name: object) -> bool:
    return name in self._names

  def __iter__(self) -> Iterator[str]:
    return iter(self._names)

  def __len__(self) -> int:
    return len(self._names)


def per_layer(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """A scanned model's host arrays by per-layer names (unscanned ones are returned as they are)."""
  out = {}
  for name, value in arrays.items():
    if name.startswith(STACKED):
      for i, layer in enumerate(value):
        out[f'layers/{i}/{name[len(STACKED):]}'] = layer
    else:
      out[name] = value
  return out
