"""The architecture of one Llama-family model (what a Hugging Face `config.json` describes), the dtypes
by name and the rematerialization policies a block can train with."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from rlaif_jax.infra import sharding as shd
from rlaif_jax.infra.errors import UserError

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}

# Rematerialization of each transformer block in training (model.remat): what the forward pass keeps
# for the backward pass, the rest being recomputed. 'none' keeps everything (fastest, most memory);
# 'dots' keeps the projection matmuls' outputs (named 'proj' in `transformer`) and recomputes the norms, rotary
# embedding, attention softmax and activations; 'full' keeps only each block's input (about one more
# forward pass of compute, least memory).
REMAT_POLICIES = {
    'none': None,
    'dots': jax.checkpoint_policies.save_only_these_names('proj'),
    'full': jax.checkpoint_policies.nothing_saveable,
}


def to_dtype(name: str | Any) -> Any:
  """'float32' / 'bfloat16' -> jnp dtype; a clear error for anything else."""
  if not isinstance(name, str):
    return name
  if name not in _DTYPES:
    raise UserError(f'Unknown dtype {name!r}; use one of {sorted(_DTYPES)}.')
  return _DTYPES[name]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture of one Llama-family model (what a Hugging Face `config.json` describes)."""
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rope_theta: float = 10000.0
  rope_scaling: tuple[tuple[str, Any], ...] | None = None  # Llama-3 style, as sorted (key, value) pairs
  rms_norm_eps: float = 1e-5
  tie_word_embeddings: bool = False
  max_position_embeddings: int = 2048
  param_dtype: str = 'float32'  # storage dtype of the parameters
  dtype: str = 'float32'  # compute dtype of matmuls and activations (softmax and norms run in float32)
  scalar_head: bool = False  # adds a [E] -> [] head on the final hidden state
  remat: str = 'none'  # what a block keeps for its backward pass: see REMAT_POLICIES
  logical_axis_rules: tuple[tuple[str, Any], ...] = shd.DEFAULT_RULES

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise UserError(f'num_heads={self.num_heads} is not a multiple of num_kv_heads='
                      f'{self.num_kv_heads}; grouped-query attention needs it to be.')
    to_dtype(self.param_dtype), to_dtype(self.dtype)
    if self.remat not in REMAT_POLICIES:
      raise UserError(f'Unknown remat policy {self.remat!r}; choose one of {sorted(REMAT_POLICIES)}.')

  def replace(self, **kw) -> 'ModelConfig':
    return dataclasses.replace(self, **kw)
