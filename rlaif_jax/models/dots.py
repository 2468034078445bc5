"""How the model's bfloat16 matmuls are asked of XLA: the one CPU-specific choice of the model code.

XLA's CPU backend runs a bfloat16 x bfloat16 -> bfloat16 dot through its float32 GEMM (the operands
converted, no faster than float32: 176-194 GFLOP/s at SmolLM2's training shapes on the 2-core AMD
EPYC VM, against float32's 193-208), while the same dot asked for a float32 result
(`preferred_element_type`) goes to YNNPACK's bfloat16 kernels, which use the CPU's bfloat16 dot
instructions (AVX512-BF16, AMX-BF16): 422-431 GFLOP/s on that VM. Rounded back to bfloat16 it is the
same arithmetic, bfloat16 products summed in float32 and rounded once, so only the kernel changes.
The operands pass an optimization barrier first: without it XLA (which may keep excess precision)
folds the bfloat16 roundings of operands computed in float32 (a norm's output, a float32 weight
cast down) into the dot and runs it in float32 again, converted weights and all (289 against 380
GFLOP/s for an RMSNorm feeding the MLP's first matmul).

`wide_accumulation(dtype)` says when to ask that way: bfloat16 compute in a program traced for the
CPU (`sharding.platform()`: the planner traces TPU programs on a CPU host) on a CPU that has such
instructions (read from /proc/cpuinfo). Float32 compute, GPUs and TPUs (whose bfloat16
matmuls accumulate in float32 in hardware already, where an explicit float32 result would only add
output traffic) and CPUs without the instructions get the plain dot, exactly as before.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from rlaif_jax.infra import sharding as shd

BF16_DOT_FLAGS = ('avx512_bf16', 'amx_bf16')  # /proc/cpuinfo flags of CPUs with bfloat16 dot products


@functools.cache
def cpu_has_bf16_dots(cpuinfo: str = '/proc/cpuinfo') -> bool:
  """Whether this host's CPU has bfloat16 dot-product instructions (False where unknown)."""
  try:
    with open(cpuinfo) as f:
      for line in f:
        if line.startswith('flags'):
          return any(flag in line.split() for flag in BF16_DOT_FLAGS)
  except OSError:
    pass
  return False


def wide_accumulation(dtype) -> bool:
  """True where a `dtype` matmul is faster asked for a float32 result and rounded back (see above)."""
  return (jnp.dtype(dtype) == jnp.bfloat16 and shd.platform() == 'cpu'
          and cpu_has_bf16_dots())


def matmul(x: jax.Array, w: jax.Array) -> jax.Array:
  """x @ w in x's dtype, through the fastest kernel for it on this backend."""
  if x.dtype == w.dtype and wide_accumulation(x.dtype):
    x, w = jax.lax.optimization_barrier((x, w))
    return jnp.matmul(x, w, preferred_element_type=jnp.float32).astype(x.dtype)
  return x @ w


def einsum(subscripts: str, a: jax.Array, b: jax.Array) -> jax.Array:
  """jnp.einsum of two operands in a's dtype, through the fastest kernel for it on this backend."""
  if a.dtype == b.dtype and wide_accumulation(a.dtype):
    a, b = jax.lax.optimization_barrier((a, b))
    return jnp.einsum(subscripts, a, b, preferred_element_type=jnp.float32).astype(a.dtype)
  return jnp.einsum(subscripts, a, b)
