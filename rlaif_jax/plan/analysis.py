"""Compiling one step ahead of time on abstract shapes and reading back what XLA says about it: bytes
per device (arguments, outputs, temporaries), FLOPs and HBM traffic, and what the compiler refused.
Also the abstract models and arrays the steps are compiled for (nothing is allocated)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from rlaif_jax.generation import sampler
from rlaif_jax.infra import sharding as shd
from rlaif_jax.models import gguf_checkpoint, hf_checkpoint, loading
from rlaif_jax.models import transformer as model_lib
from rlaif_jax.models.config import ModelConfig
from rlaif_jax.plan import loops
from rlaif_jax.plan.chips import HEADROOM, Chip
from rlaif_jax.infra.errors import MissingInput

S = jax.ShapeDtypeStruct


def model_config(source: str, architecture: Any, **overrides) -> ModelConfig:
  """The architecture only: from config.*.architecture (Hugging Face config.json fields) when set,
  else from the source's config.json or GGUF header. No weights are read."""
  if architecture:
    arch = architecture.to_dict() if hasattr(architecture, 'to_dict') else dict(architecture)
    hf = {'model_type': 'llama', **arch}
    return hf_checkpoint.config_from_hf(hf, 'config.model.architecture', **overrides)
  if source == loading.DEFAULT_MODEL:
    source = gguf_checkpoint.smollm2_path()
  if source.endswith('.gguf'):
    return gguf_checkpoint.load_gguf(source, **overrides)[0]
  if os.path.isdir(source):
    with open(os.path.join(source, 'config.json')) as f:
      return hf_checkpoint.config_from_hf(json.load(f), source, **overrides)
  raise MissingInput(f'Model source {source!r} is not {loading.DEFAULT_MODEL!r}, a .gguf file '
                     f'or a Hugging Face folder; to plan without it set its architecture '
                     f'(config.model.architecture = config.json fields).')


abstract_model = loading.abstract_model  # shapes, dtypes and logical axes, nothing allocated


def device_bytes(tree: Any, shardings: Any) -> int:
  """Bytes one device holds of an abstract pytree laid out by `shardings` (the largest shard);
  `shardings` may be a prefix of the tree (a sharding over an empty node, as for an optimizer's
  masked-out parameters, covers no bytes)."""
  def one(sh, sub):
    return sum(math.prod(sh.shard_shape(x.shape) if x.shape else ()) * jnp.dtype(x.dtype).itemsize
               for x in jax.tree.leaves(sub))
  sizes = jax.tree.map(one, shardings, tree,
                       is_leaf=lambda s: isinstance(s, jax.sharding.Sharding))
  return int(sum(jax.tree.leaves(sizes)))


def params_bytes(model: model_lib.Transformer, mesh: jax.sharding.Mesh) -> int:
  state = nnx.state(model, nnx.Param)
  return device_bytes(state, shd.state_shardings(state, mesh, model.cfg.logical_axis_rules))


@dataclasses.dataclass
class Step:
  """One compiled step: per-device bytes, FLOPs and HBM traffic, how often an iteration runs it."""
  stage: str
  name: str
  count: int  # runs per unit of its stage (an RL iteration, a label batch, a reward-model step)
  resident: int  # bytes per device of other models' weights kept on the chips meanwhile
  arguments: int = 0
  outputs: int = 0
  aliased: int = 0
  temporaries: int = 0
  flops: float = 0.0
  bytes_accessed: float = 0.0
  error: str = ''  # the compiler's refusal (usually: out of HBM), when it refused
  pallas_calls: int = 0  # Pallas (Mosaic) kernels in the compiled program: splash attention

  @property
  def total(self) -> int:
    return self.arguments + self.outputs - self.aliased + self.temporaries + self.resident

  def fits(self, chip: Chip) -> bool:
    return not self.error and self.total <= HEADROOM * chip.hbm

  def seconds(self, chip: Chip, mfu: float) -> float:
    """Estimated time: compute at the given MFU or HBM traffic at full bandwidth, the slower."""
    return max(self.flops / (chip.peak_flops * mfu), self.bytes_accessed / chip.bandwidth)


def compile_step(step: Step, fn: Callable, args: Sequence[Any], mesh: jax.sharding.Mesh) -> Step:
  """Lower and compile `fn` (a jax.jit with in_shardings) on abstract args; fill in the numbers.

  XLA's cost analysis counts a loop body once (the layer scan, the LM head's row chunks, the RL
  update's epochs, minibatches and micro-batches); `loops.loop_factors` reads the compiled program
  to count each loop as often as it runs."""
  t0 = time.time()
  try:
    with jax.set_mesh(mesh):
      compiled = fn.lower(*args).compile()
  except Exception as e:  # noqa: BLE001 -- the TPU compiler refuses programs that exceed HBM
    msg = str(e)
    if 'RESOURCE_EXHAUSTED' not in msg and 'memory' not in msg.lower():
      raise
    step.error = ' '.join(msg.split())[:300]
    print(f'[plan] {step.stage} / {step.name}: does not compile ({time.time() - t0:.0f} s)', flush=True)
    return step
  t1 = time.time()
  mem = compiled.memory_analysis()
  step.arguments, step.outputs = mem.argument_size_in_bytes, mem.output_size_in_bytes
  step.aliased, step.temporaries = mem.alias_size_in_bytes, mem.temp_size_in_bytes
  flops, bytes_ = _cost(compiled)
  text = compiled.as_text()
  step.pallas_calls = text.count('custom_call_target="tpu_custom_call"')
  flops_factor, bytes_factor = loops.loop_factors(text)
  step.flops, step.bytes_accessed = flops * flops_factor, bytes_ * bytes_factor
  print(f'[plan] {step.stage} / {step.name}: compiled in {t1 - t0:.0f} s (loops counted in '
        f'{time.time() - t1:.1f} s)', flush=True)
  return step


def _cost(compiled) -> tuple[float, float]:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get('flops', 0.0)), float(cost.get('bytes accessed', 0.0))


def decoding_shardings(d: sampler.Decoding, rules, mesh: jax.sharding.Mesh) -> sampler.Decoding:
  """The sampler's loop state laid out as inside `sampler.sample`: rows over the batch axes, the
  KV cache also over key/value heads."""
  def named(axes, x):
    spec = shd.logical_to_spec(axes[:len(x.shape)], rules, x.shape, mesh, strict=False)
    return jax.sharding.NamedSharding(mesh, spec)
  rows = lambda x: named(('batch', None, None), x)
  repl = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  cache = d.cache.map_arrays(lambda x, axes: named(axes, x))._replace(index=repl)
  return d._replace(i=repl, cache=cache, key=repl, key_valid=rows(d.key_valid), done=rows(d.done),
                    token=rows(d.token), pos=rows(d.pos), tokens=rows(d.tokens),
                    log_probs=rows(d.log_probs), mask=rows(d.mask))


def abstract_arrays(tree: Any) -> Any:
  """ShapeDtypeStructs (no shardings) for a pytree of arrays or ShapeDtypeStructs."""
  return jax.tree.map(lambda x: S(x.shape, x.dtype), tree)


def abstract_key() -> Any:
  """A ShapeDtypeStruct of a PRNG key."""
  return jax.eval_shape(lambda: jax.random.key(0))
