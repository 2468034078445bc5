"""The decoder-only transformer in Flax NNX, one model for every family we load.

Llama 2/3 and SmolLM2 are the base: RMSNorm, rotary embeddings (theta from the checkpoint, Llama-3 or
linear frequency scaling), grouped-query attention, SwiGLU MLP, tied or untied embeddings, and an
optional scalar head (value function / reward model). The other families are switches of
`ModelConfig`: q/k/v biases (Qwen2), q/k RMSNorm (Qwen3, Gemma 3), (1 + weight) norms, scaled
embeddings, GeGLU, norms around both sublayers, score and logit soft-capping, per-layer sliding-window
attention with its own rotary base (Gemma 2/3, Mistral).

Every parameter carries logical axis names in its `logical_axes` metadata; `infra.sharding` turns
them into mesh shardings with the config's rules table. Activations are constrained through the same
rules when a mesh is set (`jax.set_mesh`).

Shapes: B batch, T query length, S key length (T, or the KV cache length), E embed, H query heads,
K key/value heads, G = H // K, D head dim, M MLP hidden, V vocab.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from rlaif_jax.infra import sharding as shd
from rlaif_jax.models import dots
from rlaif_jax.models.config import REMAT_POLICIES, ModelConfig, to_dtype
from rlaif_jax.models.layers import MLP, Attention, RMSNorm, param, rope_frequencies, soft_cap


K_AXES = ('batch', 'act_kv_heads', None, 'length')
V_AXES = ('batch', 'act_kv_heads', 'length', None)


class KVCache(NamedTuple):
  """Key/value cache: per layer, k [B, K, D, S] and v [B, K, S, D]; `index` is where the next tokens
  are written.

  Decode attention is a multiply-and-reduce over an outer axis of each cache (D for q.k, S for p.v),
  vectorised along the contiguous inner one: on CPU this ran twice as fast as batched matmuls with
  one query row per (batch, kv head).

  Unscanned models keep one array per layer (a tuple), so each layer's update is an in-place write of
  its own small buffer; scanned models (`scan_layers`) one stacked [L, ...] array each for k and v,
  carried through the layer scan and written in place at (layer, index).
  """
  k: tuple[jax.Array, ...] | jax.Array
  v: tuple[jax.Array, ...] | jax.Array
  index: jax.Array  # int32 scalar

  @classmethod
  def zeros(cls, cfg: ModelConfig, batch: int, length: int) -> 'KVCache':
    k_shape = (batch, cfg.num_kv_heads, cfg.head_dim, length)
    v_shape = (batch, cfg.num_kv_heads, length, cfg.head_dim)
    dt, n = to_dtype(cfg.dtype), cfg.num_layers
    if cfg.scan_layers:
      return cls(jnp.zeros((n, *k_shape), dt), jnp.zeros((n, *v_shape), dt), jnp.zeros((), jnp.int32))
    return cls(tuple(jnp.zeros(k_shape, dt) for _ in range(n)),
               tuple(jnp.zeros(v_shape, dt) for _ in range(n)), jnp.zeros((), jnp.int32))

  @property
  def stacked(self) -> bool:
    return not isinstance(self.k, tuple)

  def layer(self, layer: int | jax.Array) -> tuple[jax.Array, jax.Array]:
    """(k [B, K, D, S], v [B, K, S, D]) of one layer (a traced index in a scanned model)."""
    return self.k[layer], self.v[layer]

  def write(self, layer: int | jax.Array, k: jax.Array, v: jax.Array) -> 'KVCache':
    """Store k [B, K, D, T] and v [B, K, T, D] of one layer at positions index..index+T."""
    if self.stacked:
      zero = jnp.zeros((), jnp.int32)
      at = lambda s_axis: tuple(self.index if a == s_axis else zero for a in range(4))
      return self._replace(
          k=jax.lax.dynamic_update_slice(self.k, k[None].astype(self.k.dtype), (layer, *at(3))),
          v=jax.lax.dynamic_update_slice(self.v, v[None].astype(self.v.dtype), (layer, *at(2))))

    def put(buffers, new, axis):
      buf = buffers[layer]
      buf = jax.lax.dynamic_update_slice_in_dim(buf, new.astype(buf.dtype), self.index, axis=axis)
      return buffers[:layer] + (buf,) + buffers[layer + 1:]
    return self._replace(k=put(self.k, k, 3), v=put(self.v, v, 2))

  def map_arrays(self, fn) -> 'KVCache':
    """fn(array, logical axes) applied to every k and v array (e.g. a sharding constraint)."""
    if self.stacked:
      return self._replace(k=fn(self.k, ('layers', *K_AXES)), v=fn(self.v, ('layers', *V_AXES)))
    return self._replace(k=tuple(fn(x, K_AXES) for x in self.k), v=tuple(fn(x, V_AXES) for x in self.v))


def windowed(mask: jax.Array, window: int, query_slots: jax.Array) -> jax.Array:
  """The mask [B, T, S] of a sliding-window layer: also key slot > query slot - window. Queries sit
  at cache slots query_slots [T] (as transformers counts them; for contiguous rows the same distances
  as positions)."""
  near = query_slots[:, None] - jnp.arange(mask.shape[2], dtype=jnp.int32)[None, :] < window
  return mask & near[None]


class Block(nnx.Module):
  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, layer: int = 0):
    self.layer_type = cfg.layer_type(layer)
    self.attn_norm = RMSNorm(cfg, rngs)
    self.attn = Attention(cfg, rngs)
    self.mlp_norm = RMSNorm(cfg, rngs)
    self.mlp = MLP(cfg, rngs)
    if cfg.sandwich_norms:
      self.attn_out_norm = RMSNorm(cfg, rngs)
      self.mlp_out_norm = RMSNorm(cfg, rngs)
    self.rules, self.sandwich = cfg.logical_axis_rules, cfg.sandwich_norms

  def __call__(self, x, positions, mask, inv_freq, cache: KVCache | None = None,
               layer: int | jax.Array = 0, prefill: bool = False, valid: jax.Array | None = None,
               sliding: bool | jax.Array | None = None):
    """mask [B, T, S] (already windowed for a sliding layer) and inv_freq [D/2] are this layer's,
    inputs so that a layer scan can feed each layer its own. valid [B, T]: the mask is causal over
    these real tokens (see `Transformer.__call__`), so a fused kernel may attend (`sliding`: this
    layer's type, traced in a layer scan)."""
    q, k, v = self.attn.project(self.attn_norm(x), positions, inv_freq)
    fused = valid is not None and (cache is None or prefill) and self.attn.kernel() != 'xla'
    sliding = self.layer_type == 'sliding' if sliding is None else sliding
    if cache is None:
      a = self.attn.attend_fused(q, k, v, valid, sliding) if fused else self.attn.attend(q, k, v, mask)
    elif prefill:  # empty cache: attend within the chunk (no masked cache slots), then store it
      cache = cache.write(layer, k.swapaxes(2, 3), v)
      a = (self.attn.attend_fused(q, k, v, valid, sliding) if fused else
           self.attn.attend(q, k, v, mask[:, :, :x.shape[1]]))
    else:  # decode: write this chunk into the cache in place, attend over the whole cache
      cache = cache.write(layer, k.swapaxes(2, 3), v)
      a = self.attn.attend_cache(q, *cache.layer(layer), mask)
    if self.sandwich:
      a = self.attn_out_norm(a)
    x = x + a
    m = self.mlp(self.mlp_norm(x))
    if self.sandwich:
      m = self.mlp_out_norm(m)
    x = x + m
    return shd.constrain(x, ('batch', 'length', 'act_embed'), self.rules), cache


def _block_without_cache(layer: Block, x, positions, mask, inv_freq, valid):
  return layer(x, positions, mask, inv_freq, valid=valid)[0]


def stack_blocks(blocks: list[Block]) -> Block:
  """One Block whose parameters are the blocks' stacked on a leading 'layers' axis [L, ...]."""
  stacked = blocks[0]
  per_layer = [nnx.state(b, nnx.Param) for b in blocks]
  leaves = [jax.tree.leaves(s, is_leaf=lambda x: isinstance(x, nnx.Variable)) for s in per_layer]
  for i, var in enumerate(leaves[0]):
    var.set_value(jnp.stack([layer[i].get_value() for layer in leaves]))
    var.set_metadata('logical_axes', ('layers', *var.get_metadata()['logical_axes']))
  return stacked


class Output(NamedTuple):
  logits: jax.Array | None  # [B, T, V] float32; None for a model without an LM head
  hidden: jax.Array  # [B, T, E] final normed hidden state
  values: jax.Array | None  # [B, T] float32 from the scalar head, when the model has one
  cache: KVCache | None


class Transformer(nnx.Module):
  """The decoder. `__call__(tokens, positions, mask, cache=None) -> Output`."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed = param(rngs, (cfg.vocab_size, cfg.hidden_size), ('vocab', 'embed'), cfg, scale=1.0)
    blocks = [Block(cfg, rngs, i) for i in range(cfg.num_layers)]
    if cfg.scan_layers:
      self.blocks = stack_blocks(blocks)
    else:
      self.layers = nnx.List(blocks)
    self.final_norm = RMSNorm(cfg, rngs)
    if cfg.lm_head and not cfg.tie_word_embeddings:
      self.lm_head = param(rngs, (cfg.hidden_size, cfg.vocab_size), ('embed', 'vocab'), cfg)
    if cfg.scalar_head:
      self.scalar_head = param(rngs, (cfg.hidden_size,), ('embed',), cfg)
      self.scalar_bias = nnx.Param(jnp.zeros((), to_dtype(cfg.param_dtype)), logical_axes=())

  def _layers(self, x, positions, masks, cache, prefill, valid):
    return _run_layers(self, x, positions, masks, cache, prefill, valid)

  def __call__(self, tokens: jax.Array, positions: jax.Array, mask: jax.Array,
               cache: KVCache | None = None, last_only: bool = False,
               prefill: bool = False, outputs_from: int = 0,
               query_slots: jax.Array | None = None, valid: jax.Array | None = None) -> Output:
    """tokens, positions: [B, T] int32; mask: [B, T, S] bool, S = T or the cache length.

    prefill: the cache is empty and this call fills its positions 0..T-1 (attention then stays
    within the T new tokens instead of scanning the whole, mostly empty, cache).
    last_only: logits (and values) only for the last position, [B, 1, V] (prefill needs no more).
    outputs_from: logits, hidden states and values only for positions outputs_from.. (scoring a
      response needs none for the prompt, and the LM head is a fifth of a small model's FLOPs).
    query_slots: [T] cache slots the new tokens count as for sliding windows (default: where they
      are written); option scoring packs several answers after one prompt and counts each from
      the prompt's end.
    valid: [B, T] bool, given when `mask` is `causal_mask(valid)` (one contiguous run of real
      tokens a row) and the pass has no filled cache: attention may then run through the fused
      kernel of config.attention (models/attention.py) instead of the dense mask.
    """
    cfg, dt, rules = self.cfg, to_dtype(self.cfg.dtype), self.cfg.logical_axis_rules
    x = jnp.take(self.embed[...], tokens, axis=0).astype(dt)
    if cfg.embed_scale:  # Gemma: times sqrt(E), rounded to the compute dtype as transformers does
      x = x * jnp.asarray(math.sqrt(cfg.hidden_size), dt)
    x = shd.constrain(x, ('batch', 'length', 'act_embed'), rules)
    masks = {'full': mask}
    if 'sliding' in cfg.layer_types:
      start = 0 if cache is None or prefill else cache.index
      slots = start + jnp.arange(tokens.shape[1], dtype=jnp.int32) if query_slots is None else query_slots
      masks['sliding'] = windowed(mask, cfg.sliding_window, slots)
    x, cache = self._layers(x, positions, masks, cache, prefill, valid)
    h = self.final_norm(x[:, -1:] if last_only else x[:, outputs_from:])
    logits = None
    if cfg.lm_head:
      w = self.embed[...].T if cfg.tie_word_embeddings else self.lm_head[...]
      logits = soft_cap(dots.einsum('bte,ev->btv', h, w.astype(dt)).astype(jnp.float32),
                        cfg.final_softcap)
      logits = shd.constrain(logits, ('batch', 'length', 'act_vocab'), rules)
    values = None
    if cfg.scalar_head:
      values = (h.astype(jnp.float32) @ self.scalar_head[...].astype(jnp.float32)
                + self.scalar_bias[...].astype(jnp.float32))
    if cache is not None:
      cache = cache._replace(index=cache.index + tokens.shape[1])
    return Output(logits, h, values, cache)


def _run_layers(model: Transformer, x, positions, masks, cache, prefill, valid=None):
  """The blocks one after another: a Python loop, or with `scan_layers` one `lax.scan` over the
  stacked blocks (compiled once whatever the depth), each layer fed its rotary frequencies and mask
  (masks: {layer type: [B, T, S]}). Training (no cache) with a remat policy recomputes what the
  policy drops per block."""
  cfg = model.cfg
  inv = {t: rope_frequencies(cfg, t) for t in masks}
  remat = REMAT_POLICIES[cfg.remat] if cache is None and cfg.remat != 'none' else None
  if not cfg.scan_layers:
    for i, layer in enumerate(model.layers):
      t = layer.layer_type
      if remat is not None:
        x = nnx.remat(_block_without_cache, policy=remat)(layer, x, positions, masks[t], inv[t],
                                                          valid)
      else:
        x, cache = layer(x, positions, masks[t], inv[t], cache, i, prefill, valid)
    return x, cache
  sliding = jnp.asarray([cfg.layer_type(i) == 'sliding' for i in range(cfg.num_layers)])
  xs = (sliding, jnp.arange(cfg.num_layers, dtype=jnp.int32))
  graphdef, params = nnx.split(model.blocks)

  def body(carry, layer_xs):
    (x, cache), (params_i, (is_sliding, i)) = carry, layer_xs
    if len(masks) == 1:
      mask, inv_freq = masks['full'], inv['full']
    else:  # this layer's mask and rotary frequencies, chosen by its type
      mask = jnp.where(is_sliding, masks['sliding'], masks['full'])
      inv_freq = jnp.where(is_sliding, inv['sliding'], inv['full'])
    block = nnx.merge(graphdef, params_i)
    sliding = is_sliding if len(masks) > 1 else False
    return block(x, positions, mask, inv_freq, cache, i, prefill, valid, sliding), None

  if remat is not None:
    body = jax.checkpoint(body, policy=remat, prevent_cse=False)
  (x, cache), _ = jax.lax.scan(body, (x, cache), (params, xs))
  return x, cache


def unscanned(model: Transformer) -> Transformer:
  """The same model with its stacked blocks sliced into a per-layer list (a copy of the layer
  weights, made once per call under jit); unscanned models are returned as they are."""
  if not model.cfg.scan_layers:
    return model
  cfg = model.cfg.replace(scan_layers=False)
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0))))
  flat = {}
  for path, var in nnx.to_flat_state(nnx.state(model)):
    if path[0] == 'blocks':
      for i in range(cfg.num_layers):
        flat[('layers', i, *path[1:])] = var.get_value()[i]
    else:
      flat[path] = var.get_value()
  state = nnx.from_flat_state([(path, var.replace(flat[path]))
                               for path, var in nnx.to_flat_state(abstract)])
  return nnx.merge(graphdef, state)


def for_decoding(model: Transformer) -> Transformer:
  """The layout token-by-token decoding runs fastest in on the traced program's platform
  (`sharding.platform()`: the planner plans a TPU's program from a CPU host). On CPU a scanned model's
  decode step slices every layer's weights and cache out of the stacked arrays each token, about
  2.7x slower for SmolLM2, so there the sampler unstacks it once per call; accelerators keep the
  scan (one compiled block, XLA fuses the slices)."""
  return unscanned(model) if shd.platform() == 'cpu' else model


def causal_mask(valid: jax.Array) -> jax.Array:
  """[B, T] bool of real (non-padding) tokens -> [B, T, T] causal mask over real keys.

  Padding queries still attend to themselves so no softmax row is empty (their outputs are ignored).
  """
  t = valid.shape[1]
  causal = jnp.tril(jnp.ones((t, t), bool))
  mask = causal[None] & valid[:, None, :]
  return mask | jnp.eye(t, dtype=bool)[None]


def positions_from_mask(valid: jax.Array) -> jax.Array:
  """Positions counting only real tokens (so left padding does not shift them): [B, T] int32."""
  return jnp.maximum(jnp.cumsum(valid.astype(jnp.int32), axis=1) - 1, 0)


def token_log_probs(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """log softmax(logits)[targets]: logits [B, T, V], targets [B, T] -> [B, T] float32."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


def forward(model: Transformer, tokens: jax.Array, valid: jax.Array, outputs_from: int = 0) -> Output:
  """Full forward pass over a padded batch. tokens, valid: [B, T]; outputs for positions
  outputs_from.. only."""
  return model(tokens, positions_from_mask(valid), causal_mask(valid), outputs_from=outputs_from,
               valid=valid)
