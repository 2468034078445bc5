"""TPU chips by their published per-chip figures, and the devices of a topology (compiled for,
never run: no TPU is needed, only the TPU compiler from the `tpu` extra)."""

from __future__ import annotations

import dataclasses
from typing import Any

from rlaif_jax.infra.errors import UserError

GiB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Chip:
  """Published per-chip figures: HBM bytes, dense bfloat16 FLOP/s, HBM bytes/s."""
  name: str
  hbm: float
  peak_flops: float
  bandwidth: float


CHIPS = {  # keyed by jax's device_kind
    'TPU v5 lite': Chip('v5e', 16 * GiB, 197e12, 819e9),
    'TPU v5': Chip('v5p', 95 * GiB, 459e12, 2765e9),
    'TPU v6 lite': Chip('v6e', 32 * GiB, 918e12, 1640e9),
}
HEADROOM = 0.9  # a step fits when its total is at most this share of HBM (the runtime needs some)


def topology_devices(topology: str) -> tuple[list[Any], Chip]:
  """The devices of a TPU topology such as 'v5e:4x4' or 'v5p:2x4x4', compiled for, never run."""
  from jax.experimental import topologies
  try:
    devices = list(topologies.get_topology_desc(topology, 'tpu').devices)
  except Exception as e:  # noqa: BLE001 -- libtpu missing or a malformed name; say which
    raise UserError(f'Cannot describe TPU topology {topology!r} ({str(e).splitlines()[0][:200]}). '
                    f"Names look like v5e:2x2, v5e:8x8, v5p:2x4x4, v6e:4x4; the TPU compiler comes "
                    f"with pip install -e '.[tpu]'.") from None
  kind = devices[0].device_kind
  if kind not in CHIPS:
    raise UserError(f'No chip figures for {kind!r}; known: {sorted(CHIPS)} (add it to plan.CHIPS).')
  return devices, CHIPS[kind]
