"""Pieces every config shares: the device mesh and the logical-axis rules table."""

import ml_collections


def mesh(data: int = -1, fsdp: int = 1, tensor: int = 1) -> ml_collections.ConfigDict:
  """Mesh axes; -1 on one axis takes the remaining devices. data x fsdp x tensor = device count."""
  return ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor))


def logical_axis_rules() -> list:
  """Logical name -> mesh axes (None = replicated). A name missing here is an error, never silently
  replicated. Parameters: vocab, embed, heads, kv_heads, head_dim, mlp, norm. Activations: batch,
  length, act_*."""
  return [
      ('batch', ('data', 'fsdp')),  # examples split over data-parallel and FSDP groups
      ('length', None),
      ('vocab', 'tensor'),
      ('embed', 'fsdp'),  # FSDP: parameters sharded along the embedding dimension
      ('heads', 'tensor'),  # tensor parallelism over attention heads...
      ('kv_heads', 'tensor'),
      ('head_dim', None),
      ('mlp', 'tensor'),  # ...and over the MLP hidden dimension
      ('norm', None),
      ('act_embed', None),
      ('act_heads', 'tensor'),
      ('act_kv_heads', 'tensor'),
      ('act_mlp', 'tensor'),
      ('act_vocab', 'tensor'),
  ]
