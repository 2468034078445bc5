"""The architecture of one decoder model (what a Hugging Face `config.json` describes), the dtypes by
name and the rematerialization policies a block can train with.

One transformer covers every family we load (Llama, Qwen2/2.5, Qwen3, Mistral, Gemma 2, Gemma 3): a
family is a few switches here (biases, q/k norms, norm offset, soft-capping, sliding windows,
activation), set from config.json by `models.families`."""

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


ACTIVATIONS = ('silu', 'gelu_tanh', 'gelu')  # of the gated MLP: SwiGLU, GeGLU (tanh or exact GELU)
LAYER_TYPES = ('full', 'sliding')  # attention over every earlier token, or the last sliding_window
# of the full-sequence passes; auto: by backend (CPU xla, GPU dot_product, TPU splash), see
# models.attention
ATTENTION_KERNELS = ('auto', 'xla', 'dot_product', 'splash')


def check_attention(kernel: str) -> None:
  if kernel not in ATTENTION_KERNELS:
    raise UserError(f'Unknown attention kernel {kernel!r}; use one of '
                    f'{", ".join(ATTENTION_KERNELS)} (--config.model.attention).')


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture of one decoder model (what a Hugging Face `config.json` describes). The defaults
  are Llama's; `models.families` sets the switches of the other families."""
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
  family: str = 'llama'  # Hugging Face model_type we were loaded from and export as
  attention_bias: bool = False  # biases on the q, k, v projections (Qwen2)
  qk_norm: bool = False  # RMSNorm over head_dim on queries and keys before rotary (Qwen3, Gemma 3)
  norm_offset: float = 0.0  # norms scale by (offset + weight): Gemma stores weight - 1
  embed_scale: bool = False  # embeddings times sqrt(hidden_size) (Gemma)
  activation: str = 'silu'  # gate activation of the MLP: see ACTIVATIONS
  sandwich_norms: bool = False  # also norm the attention and MLP outputs before the residual (Gemma)
  attn_softcap: float = 0.0  # attention scores -> cap * tanh(scores / cap); 0 = off (Gemma 2)
  final_softcap: float = 0.0  # the same on the output logits (Gemma 2)
  query_pre_attn_scalar: float = 0.0  # scores scaled by its -1/2 power; 0 = head_dim (Gemma)
  sliding_window: int = 0  # keys a 'sliding' layer attends (this token and window - 1 before)
  layer_types: tuple[str, ...] = ()  # per layer, see LAYER_TYPES; () = all 'full'
  rope_local_theta: float = 0.0  # rotary base of 'sliding' layers, unscaled; 0 = as 'full' (Gemma 3)
  param_dtype: str = 'float32'  # storage dtype of the parameters
  dtype: str = 'float32'  # compute dtype of matmuls and activations (softmax and norms run in float32)
  scalar_head: bool = False  # adds a [E] -> [] head on the final hidden state
  lm_head: bool = True  # False for scalar-only models (reward, value): no [E, V] head, no logits
  remat: str = 'none'  # what a block keeps for its backward pass: see REMAT_POLICIES
  attention: str = 'auto'  # full-sequence attention kernel: see models.attention.KERNELS
  scan_layers: bool = False  # blocks stacked [L, ...] and run by one lax.scan (compiled once)
  logit_chunk_rows: int = 0  # rows per chunk of the LM-head log-probs; 0 = by vocabulary size
  lora_rank: int = 0  # > 0: LoRA adapters of this rank on lora_targets (models/lora.py)
  lora_alpha: float = 16.0  # adapters scaled by alpha / rank
  lora_targets: tuple[str, ...] = ('q', 'k', 'v', 'o', 'gate', 'up', 'down')
  logical_axis_rules: tuple[tuple[str, Any], ...] = shd.DEFAULT_RULES

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise UserError(f'num_heads={self.num_heads} is not a multiple of num_kv_heads='
                      f'{self.num_kv_heads}; grouped-query attention needs it to be.')
    to_dtype(self.param_dtype), to_dtype(self.dtype)
    if self.activation not in ACTIVATIONS:
      raise UserError(f'Unknown activation {self.activation!r}; supported: {ACTIVATIONS}.')
    if self.layer_types and (len(self.layer_types) != self.num_layers
                             or set(self.layer_types) - set(LAYER_TYPES)):
      raise UserError(f'layer_types {self.layer_types} must name one of {LAYER_TYPES} for each of '
                      f'the {self.num_layers} layers.')
    if 'sliding' in self.layer_types and self.sliding_window < 1:
      raise UserError('Sliding-window layers need sliding_window >= 1.')
    if not (self.lm_head or self.scalar_head):
      raise UserError('A model needs an LM head or a scalar head (lm_head=False needs scalar_head).')
    if self.lora_rank < 0 or set(self.lora_targets) - {'q', 'k', 'v', 'o', 'gate', 'up', 'down'}:
      raise UserError(f'LoRA needs rank >= 0 and targets among q, k, v, o, gate, up, down; got rank '
                      f'{self.lora_rank}, targets {self.lora_targets}.')
    check_attention(self.attention)
    if self.remat not in REMAT_POLICIES:
      raise UserError(f'Unknown remat policy {self.remat!r}; choose one of {sorted(REMAT_POLICIES)}.')

  def layer_type(self, layer: int) -> str:
    return self.layer_types[layer] if self.layer_types else 'full'

  def replace(self, **kw) -> 'ModelConfig':
    return dataclasses.replace(self, **kw)
