"""Host memory allocator settings for XLA's CPU buffers.

XLA on CPU allocates each step's temporaries (activations, gradients, logits: gigabytes per PPO
minibatch) with malloc and frees them at the end of the step. glibc serves large blocks with fresh
`mmap`s and returns them to the kernel on free, so every step page-faults its whole working set in
again: on the 2-core bench machine about a million faults and 3 s of kernel time per SmolLM2-135M
policy forward+backward, 35% of the step (`bench/ppo.py`). These glibc tunables keep freed memory in
one heap for reuse and back it with transparent huge pages; the resident set stays at the peak.

glibc reads tunables only when a process starts, so the launch scripts export them
(`launch/setup.sh`) and `rlaif_jax.main` restarts itself with them when they are absent. A
`GLIBC_TUNABLES` already in the environment is left as it is (set it to an empty string to opt out).
Other C libraries (musl) and operating systems ignore the variable.
"""

from __future__ import annotations

import os
import sys

ALLOCATOR_TUNABLES = ':'.join([
    'glibc.malloc.arena_max=1',  # one heap: worker threads' large blocks otherwise fall back to mmap
    'glibc.malloc.mmap_max=0',  # large blocks come from the heap too, not per-allocation mmaps
    'glibc.malloc.trim_threshold=1099511627776',  # never give freed heap memory back to the kernel
    'glibc.malloc.hugetlb=1',  # transparent huge pages for the heap (glibc >= 2.35)
])


def allocator_env(env: dict[str, str] | None = None) -> dict[str, str]:
  """`env` (default: this process's) with the allocator tunables added unless already set."""
  env = dict(os.environ if env is None else env)
  env.setdefault('GLIBC_TUNABLES', ALLOCATOR_TUNABLES)
  return env


def reexec_with_allocator_tunables() -> None:
  """Restarts this Python process with the tunables when they are absent (Linux only)."""
  if 'GLIBC_TUNABLES' in os.environ or not sys.platform.startswith('linux'):
    return
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], allocator_env())
