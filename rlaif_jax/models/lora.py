"""LoRA adapters (Hu et al. 2021): each target projection W [in..., out...] gains A [in..., r] and
B [r, out...] and computes x W + (alpha / r) (x A) B; B starts at zero, so a fresh adapter leaves the
model as it was. Only adapters train (`only_adapters` gives the optimizer moments for them alone,
`freeze_base` stops the base weights' gradients; a scalar head trains too); the reference policy is the same weights with the
adapters off (`disabled`: B zero, nothing else copied); export merges them (`merged`) and can
write them as a PEFT adapter folder (`to_peft`).

A small layer of our own rather than qwix: our projections run through a custom-VJP matmul that
qwix's interception of jnp/lax dot calls would not see.

Adapters are `Adapter` variables (an nnx.Param subclass) named '<target>_lora_a' / '_lora_b' beside
their weight, with logical axes, so they shard, stack under scanned layers and checkpoint like any
parameter. Checkpoints of a LoRA model hold the adapters and their optimizer state alone
(`base_weights`).
"""

from __future__ import annotations

import math
import zlib
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from rlaif_jax.infra import sharding as shd

TARGETS = ('q', 'k', 'v', 'o', 'gate', 'up', 'down')


class Adapter(nnx.Param):
  """A LoRA factor: trained while the base weights stay frozen."""


def is_adapter_name(name: str) -> bool:
  return '_lora_' in name


def trains(name: str) -> bool:
  """What trains beside the frozen base: the adapters and a scalar head (PPO's values, a reward
  model's score), which the base checkpoint never had."""
  return is_adapter_name(name) or any(part.startswith('scalar_') for part in name.split('/'))


def add(module: nnx.Module, target: str, cfg, rngs: nnx.Rngs, in_shape: tuple, in_axes: tuple,
        out_shape: tuple, out_axes: tuple) -> None:
  """Give `module` the adapters of its projection `target` when the config asks for them."""
  if not cfg.lora_rank or target not in cfg.lora_targets:
    return
  r = cfg.lora_rank
  dt = jnp.dtype(cfg.param_dtype)
  a = jax.random.normal(rngs.params(), (*in_shape, r), jnp.float32) / math.sqrt(math.prod(in_shape))
  setattr(module, f'{target}_lora_a', Adapter(a.astype(dt), logical_axes=(*in_axes, None)))
  setattr(module, f'{target}_lora_b', Adapter(jnp.zeros((r, *out_shape), dt),
                                              logical_axes=(None, *out_axes)))


def delta(module: nnx.Module, target: str, x: jax.Array, cfg) -> jax.Array | None:
  """(alpha / r) (x A) B for the projection's flattened input x [..., in] -> [..., out] (None
  without adapters)."""
  a = getattr(module, f'{target}_lora_a', None)
  if a is None:
    return None
  b = getattr(module, f'{target}_lora_b')
  dt = x.dtype
  r = cfg.lora_rank
  low = x @ a[...].astype(dt).reshape(-1, r)
  return (cfg.lora_alpha / r) * (low @ b[...].astype(dt).reshape(r, -1))


def fresh(abstract_state: Any, have: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Host values for the adapters a checkpoint lacks: A ~ N(0, 1 / fan-in) seeded by its name (the
  same on every process), B = 0."""
  out = {}
  for path, var in nnx.to_flat_state(abstract_state):
    name = shd._path_name(path)
    if not is_adapter_name(name) or name in have:
      continue
    shape, dtype = var.get_value().shape, var.get_value().dtype
    if name.endswith('_lora_b'):
      out[name] = np.zeros(shape, dtype)
    else:
      rng = np.random.default_rng(zlib.crc32(name.encode()))
      fan_in = math.prod(shape[1:-1] if name.startswith('blocks/') else shape[:-1])  # [L, ...]
      out[name] = (rng.standard_normal(shape) / math.sqrt(fan_in)).astype(dtype)
  return out


def base_weights(prefix: str):
  """Which leaves of a train state a LoRA model's checkpoints leave out: its base weights, the
  parameters under `prefix` ('params/' in a TrainState) that do not train. They never change and
  come back from where the model was loaded."""
  return lambda name: name.startswith(prefix) and not trains(name[len(prefix):])


def _map(fn, params: Any) -> Any:
  return jax.tree_util.tree_map_with_path(lambda p, v: fn(shd._path_name(p), v), params)


def freeze_base(params: Any) -> Any:
  """The parameters with the base weights' gradients stopped (adapters train alone)."""
  return _map(lambda n, v: v if trains(n) else jax.lax.stop_gradient(v), params)


def disabled(params: Any) -> Any:
  """The same parameters with every adapter off (B = 0): the reference policy of LoRA training."""
  return _map(lambda n, v: jnp.zeros_like(v) if any(p.endswith('_lora_b') for p in n.split('/'))
              else v, params)


def only_adapters(optimizer: optax.GradientTransformation, trainable=trains
                  ) -> optax.GradientTransformation:
  """`optimizer` on the adapters and a scalar head (the names `trainable` accepts); the base
  weights get zero updates and no optimizer state."""
  labels = lambda params: _map(lambda n, _: 'adapter' if trainable(n) else 'frozen', params)
  return optax.multi_transform({'adapter': optimizer, 'frozen': optax.set_to_zero()}, labels)


def count(params: Any) -> tuple[int, int]:
  """(adapter parameters, all parameters)."""
  sizes = _map(lambda n, v: (int(np.prod(v.shape)), is_adapter_name(n)), params)
  leaves = jax.tree.leaves(sizes, is_leaf=lambda x: isinstance(x, tuple))
  return sum(s for s, a in leaves if a), sum(s for s, _ in leaves)


def merged(arrays: Mapping[str, np.ndarray], cfg) -> dict[str, np.ndarray]:
  """Host weights by name (per layer, as `hf_checkpoint.host_arrays` gives them) with each adapter
  folded into its weight, W + (alpha / r) A B, and the adapters dropped."""
  out = {n: v for n, v in arrays.items() if not is_adapter_name(n)}
  r = cfg.lora_rank
  for name in arrays:
    if not name.endswith('_lora_a'):
      continue
    weight = name[:-len('_lora_a')]
    a = np.asarray(arrays[name], np.float32)
    b = np.asarray(arrays[weight + '_lora_b'], np.float32)
    w = np.asarray(out[weight])
    d = (cfg.lora_alpha / r) * (a.reshape(-1, r) @ b.reshape(r, -1))
    out[weight] = (w.astype(np.float32) + d.reshape(w.shape)).astype(w.dtype)
  return out


def to_peft(arrays: Mapping[str, np.ndarray], cfg, weight_names) -> tuple[dict[str, np.ndarray], dict]:
  """A PEFT LoRA adapter of these adapters: tensors named as `PeftModel.save_pretrained` writes
  them, and adapter_config.json's fields. `weight_names`: (our weight, HF tensor name, layout) rows
  (`families.weight_names`, prefix 'model.'). Every target's HF weight is our W [in..., out...]
  flattened to [in, out] and transposed, so A [in..., r] -> lora_A [r, in] and B [r, out...] ->
  lora_B [out, r]; PEFT's scale alpha / r is ours."""
  hf_of = {ours: (hf, layout) for ours, hf, layout in weight_names}
  r, tensors, modules = cfg.lora_rank, {}, set()
  for name in sorted(arrays):
    if not name.endswith('_lora_a'):
      continue
    hf, layout = hf_of[name[:-len('_lora_a')]]
    assert layout in ('in', 'out', 'T'), (name, layout)  # a [out, in] matrix in the HF folder
    module = 'base_model.model.' + hf[:-len('.weight')]
    a = np.asarray(arrays[name], np.float32).reshape(-1, r)
    b = np.asarray(arrays[name[:-1] + 'b'], np.float32).reshape(r, -1)
    tensors[module + '.lora_A.weight'] = np.ascontiguousarray(a.T)
    tensors[module + '.lora_B.weight'] = np.ascontiguousarray(b.T)
    modules.add(hf.split('.')[-2])
  config = {'peft_type': 'LORA', 'task_type': 'CAUSAL_LM', 'r': r, 'lora_alpha': cfg.lora_alpha,
            'target_modules': sorted(modules), 'lora_dropout': 0.0, 'bias': 'none',
            'fan_in_fan_out': False, 'use_rslora': False, 'modules_to_save': None,
            'inference_mode': True}
  return tensors, config
