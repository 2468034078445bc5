"""The mesh's axis names and the default logical-axis rules table: plain data, no jax, so a config
file (`configs/common.py`) reads it without importing jax and a bad config fails at once."""

from __future__ import annotations

from typing import Any

MESH_AXES = ('data', 'fsdp', 'tensor')

# Logical name -> mesh axes. Parameters: `vocab, embed, heads, kv_heads, head_dim, mlp, norm`.
# Activations: `batch, length, act_*`. Kept as a tuple of pairs so it can live in a frozen config.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ('batch', ('data', 'fsdp')),
    ('length', None),
    ('vocab', 'tensor'),
    ('embed', 'fsdp'),
    ('heads', 'tensor'),
    ('kv_heads', 'tensor'),
    ('head_dim', None),
    ('mlp', 'tensor'),
    ('norm', None),
    ('layers', None),
    ('act_embed', None),
    ('act_heads', 'tensor'),
    ('act_kv_heads', 'tensor'),
    ('act_mlp', 'tensor'),
    ('act_vocab', 'tensor'),
)
