"""Fused attention kernels for the model's full-sequence passes (training forward, sampler prefill),
chosen by backend: the dense XLA path of `layers.Attention.attend` on CPU, `jax.nn.dot_product_attention`
(cuDNN's flash attention on GPU) and Pallas splash attention on TPU. The dense path materialises the
[B, K, G, T, S] scores; the kernels never hold more than a tile of them, so attention's memory is linear in
the sequence length.

A kernel needs the mask's structure, not an array: causal self-attention over one contiguous run of real
tokens per row (`valid` [B, T]: left padding before it, right padding after it, as every padded batch of
this codebase is), and a sliding window on 'sliding' layers. Padding queries' outputs are garbage (the
dense path's too) and are ignored by every caller. Decoding (one query over the KV cache) keeps the dense
path: its scores are [B, K, G, 1, S], linear already.

- `dot_product`: the rows are rolled so each one's real tokens start at 0 (a per-row gather of q, k, v,
  linear in T), then attention is causal with key/value lengths, the form cuDNN's fused kernel takes
  (`implementation='cudnn'` on GPU with bfloat16/float16; XLA's reference implementation elsewhere).
  No soft-capping: a model with `attn_softcap` (Gemma 2) keeps the dense path.
- `splash`: MaxText's choice on TPU. Segment ids mark the real tokens (1) and the padding (0); causal
  and local masks are static; soft-capping is in the kernel. GQA runs the multi-query kernel per
  key/value head. Under a mesh it runs in `jax.shard_map` over the batch and key/value-head axes (a
  Pallas call has no partitioning rule of its own), the sequence whole on each device. On CPU it runs
  in Pallas' interpret mode (tests only: slow).

Shapes: B batch, T length, H query heads, K key/value heads, G = H // K, D head dim.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from rlaif_jax.infra import sharding as shd
from rlaif_jax.models.config import check_attention

BY_PLATFORM = {'gpu': 'dot_product', 'cuda': 'dot_product', 'rocm': 'dot_product', 'tpu': 'splash'}
SPLASH_BLOCK = 512  # the splash kernel's tile along the sequence (MaxText's default), or the
SPLASH_MIN_BLOCK = 128  # largest of 256, 128 that divides the length rounded up to 128


def resolve(kernel: str, target: str | None = None, softcap: float = 0.0) -> str:
  """The kernel a model's full-sequence attention runs: `kernel` (model.attention), with 'auto' chosen
  by the `target` platform (default: `shd.platform()`, the traced program's). dot_product has
  no soft-capping, so a soft-capped model keeps the dense path there."""
  check_attention(kernel)
  if kernel == 'auto':
    kernel = BY_PLATFORM.get(target or shd.platform(), 'xla')
  if kernel == 'dot_product' and softcap:
    return 'xla'
  return kernel


def fused(kernel: str, q: jax.Array, k: jax.Array, v: jax.Array, valid: jax.Array, *, scale: float,
          softcap: float, window: int, rules) -> jax.Array:
  """Causal attention of q [B, T, H, D] over k, v [B, K, T, D] among each row's real tokens
  (valid [B, T], one contiguous run), within the last `window` tokens when window > 0 -> [B, T, H, D]."""
  fn = {'dot_product': _dot_product, 'splash': _splash}[kernel]
  fn = functools.partial(fn, scale=scale, softcap=softcap, window=window)
  mesh = jax.sharding.get_abstract_mesh()
  if kernel != 'splash' or mesh.empty:
    return fn(q, k, v, valid)
  b, t, h, d = q.shape
  batch = shd.logical_to_spec(('batch', None), rules, (b, t), mesh, strict=False)[0]
  heads = shd.logical_to_spec(('batch', 'act_kv_heads'), rules, (b, k.shape[1]), mesh, strict=False)[1]
  q_spec = jax.sharding.PartitionSpec(batch, None, heads, None)  # heads: H splits as K does
  kv_spec = jax.sharding.PartitionSpec(batch, heads, None, None)
  return jax.shard_map(fn, in_specs=(q_spec, kv_spec, kv_spec, jax.sharding.PartitionSpec(batch, None)),
                       out_specs=q_spec, check_vma=False)(q, k, v, valid)


def _roll_rows(x: jax.Array, shift: jax.Array) -> jax.Array:
  """Row b of x [B, T, ...] moved left by shift[b] (cyclically): out[b, t] = x[b, (t + shift[b]) % T]."""
  t = x.shape[1]
  idx = (jnp.arange(t)[None, :] + shift[:, None]) % t
  return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def _dot_product(q, k, v, valid, *, scale, softcap, window):
  del softcap  # resolve() keeps soft-capped models on the dense path
  t = q.shape[1]
  lengths = jnp.sum(valid, axis=1, dtype=jnp.int32)
  start = jnp.argmax(valid, axis=1).astype(jnp.int32)  # left padding of each row
  rolled = [_roll_rows(x, start) for x in (q, k.swapaxes(1, 2), v.swapaxes(1, 2))]
  cudnn = BY_PLATFORM.get(shd.platform()) == 'dot_product' and q.dtype in (jnp.bfloat16, jnp.float16)
  out = jax.nn.dot_product_attention(
      *rolled, scale=scale, is_causal=True, query_seq_lengths=lengths,
      key_value_seq_lengths=lengths, local_window_size=(window - 1, 0) if window else None,
      implementation='cudnn' if cudnn else None)
  return _roll_rows(out, (t - start) % t)


def _splash(q, k, v, valid, *, scale, softcap, window):
  from jax.experimental.pallas.ops.tpu import splash_attention as sa  # Pallas: only where used

  b, t, h, d = q.shape
  kvh = k.shape[1]
  padded = -(-t // SPLASH_MIN_BLOCK) * SPLASH_MIN_BLOCK
  block = next(b for b in (SPLASH_BLOCK, 256, SPLASH_MIN_BLOCK) if padded % b == 0)
  seg = valid.astype(jnp.int32)
  if padded != t:  # tail slots of their own segment (2): no real query attends them
    extra = padded - t
    q, k, v = (jnp.pad(x, [(0, 0)] * axis + [(0, extra)] + [(0, 0)] * (3 - axis))
               for x, axis in ((q, 1), (k, 2), (v, 2)))
    seg = jnp.pad(seg, ((0, 0), (0, extra)), constant_values=2)
  shape = (padded, padded)
  one = sa.LocalMask(shape, (window - 1, 0), 0) if window else sa.CausalMask(shape)
  sizes = dict(block_q=block, block_kv=block, block_kv_compute=block)
  blocks = sa.BlockSizes(**sizes, block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                         block_q_dq=block, block_kv_dq=block)
  kernel = sa.make_splash_mqa_single_device(
      sa.MultiHeadMask([one] * (h // kvh)), block_sizes=blocks,
      attn_logits_soft_cap=softcap or None, interpret=shd.platform() != 'tpu')
  qg = (q.astype(jnp.float32) * scale).astype(q.dtype)  # the kernel scales nothing
  qg = qg.reshape(b, padded, kvh, h // kvh, d).transpose(0, 2, 3, 1, 4)  # [B, K, G, T, D]
  per_head = jax.vmap(lambda qh, kh, vh, s: kernel(qh, kh, vh, segment_ids=sa.SegmentIds(s, s)),
                      in_axes=(0, 0, 0, None))
  out = jax.vmap(per_head)(qg, k, v, seg)  # [B, K, G, T, D]
  return out.transpose(0, 3, 1, 2, 4).reshape(b, padded, h, d)[:, :t]
