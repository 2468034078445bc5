"""Multi-host runs: JAX's multi-controller runtime, started when the launch environment asks for it.

Every host runs the same command; `jax.distributed.initialize` connects them, after which
`jax.devices()` lists every chip of the slice and one mesh spans them all. `initialize(mode)`:
  - 'auto' (default): initialize when the environment describes several processes: an explicit
    coordinator (`JAX_COORDINATOR_ADDRESS`, with `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID`; what
    `launch/local.sh` sets), a SLURM job step with several tasks, an Open MPI launch, or a multi-worker
    TPU VM pod (JAX detects the addresses and ranks itself);
  - 'always': initialize, letting JAX detect the cluster (an error if it cannot);
  - 'never': single process.
On CPU, cross-process collectives use gloo.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from rlaif_jax.infra.errors import UserError

MODES = ('auto', 'always', 'never')


def wanted(env: dict[str, str] | None = None) -> bool:
  """Does the launch environment describe more than one process?"""
  env = os.environ if env is None else env
  return ('JAX_COORDINATOR_ADDRESS' in env or int(env.get('SLURM_NTASKS', '1') or 1) > 1
          or int(env.get('OMPI_COMM_WORLD_SIZE', '1') or 1) > 1
          or ',' in env.get('TPU_WORKER_HOSTNAMES', ''))


def initialize(mode: str = 'auto') -> bool:
  """Start the multi-controller runtime if `mode` and the environment say so; returns whether it did.
  Must run before anything touches a device."""
  if mode not in MODES:
    raise UserError(f'Unknown distributed {mode!r}; use one of {MODES}.')
  if mode == 'never' or (mode == 'auto' and not wanted()):
    return False
  kwargs = {}
  for name, key in (('num_processes', 'JAX_NUM_PROCESSES'), ('process_id', 'JAX_PROCESS_ID')):
    if key in os.environ:
      kwargs[name] = int(os.environ[key])
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(**kwargs)
  return True


# ---------------------------------------------------------------------------- host side of a run
# Every process runs the same program on the same host data (prompts, keys, order); these are the
# points where it meets the other processes. Each is collective: every process calls it, in the same
# order.

def is_writer() -> bool:
  """Process 0 writes the run's files (see infra.storage); the others read them after a barrier."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Wait until every process reaches the barrier `name` (nothing to wait for with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def to_host(tree: Any) -> Any:
  """NumPy copies of a pytree's arrays; an array sharded over other processes' devices is gathered
  first (`process_allgather`), so every process gets the whole value."""

  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))

  return jax.tree.map(one, tree)


def any_process(flag: bool) -> bool:
  """True on every process when `flag` is True on any of them (e.g. a SIGTERM that reached one host)."""
  if jax.process_count() == 1:
    return bool(flag)
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.int32))))
