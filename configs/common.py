"""Pieces every config shares: the device mesh and the logical-axis rules table."""

import ml_collections

from rlaif_jax import sharding as shd


def mesh(data: int = -1, fsdp: int = 1, tensor: int = 1) -> ml_collections.ConfigDict:
  """Mesh axes; -1 on one axis takes the remaining devices. data x fsdp x tensor = device count."""
  return ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor))


def logical_axis_rules() -> list:
  """Logical name -> mesh axes (None = replicated), a copy of `rlaif_jax.sharding.DEFAULT_RULES`:
  batch -> (data, fsdp); embed -> fsdp (FSDP); vocab, heads, kv_heads, mlp -> tensor (tensor
  parallelism); length, head_dim, norm -> replicated; act_* are the activations' names. Edit the copy
  in a config (or on the command line) to change a layout; a name without a rule is an error, never
  silently replicated."""
  return [list(rule) for rule in shd.DEFAULT_RULES]
