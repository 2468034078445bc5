"""The option-scoring kernel: log P(option | prompt) for every prompt and every candidate answer, with
the prompts prefilled into a KV cache once, so multi-token answers cost one more short pass rather than
another pass over the prompt. One jitted function per shape.

Shapes: B prompts of P tokens (left-padded), O options of at most L tokens (right-padded).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from rlaif_jax.infra import sharding as shd
from rlaif_jax.models import transformer as model_lib


def option_log_probs(model: model_lib.Transformer, prompt: jax.Array, prompt_valid: jax.Array,
                     options: jax.Array, options_valid: jax.Array, prefix: jax.Array | None = None,
                     prefix_valid: jax.Array | None = None) -> jax.Array:
  """log P(option | prompt) for every prompt and option: prompt [B, P] left-padded, options [O, L]
  right-padded token ids (options_valid marks real tokens) -> [B, O] float32.

  The prompts are prefilled into a KV cache once; then all O options of a prompt are fed together
  as one [O * L] chunk after it, each option attending to the prompt and to its own earlier tokens
  only (a block-diagonal mask) and counted from the prompt's end. The cache holds P + O * L slots
  per prompt rather than O copies of P + L (d-RLAIF's ten answers after a long prompt: a tenth).

  prefix [R, S] (R copies of one left-padded prefix, prefix_valid marks real tokens; R divides B): a
  beginning that every prompt shares and that `prompt` then continues (the judge's system prompt,
  preamble and exemplars). It is prefilled R times for the batch (`shared_prefix_cache`) instead of
  B times: R = 1 on one device, one copy per batch shard on a mesh.
  """
  if prefix is not None:
    return _after_shared_prefix(model, prefix, prefix_valid, prompt, prompt_valid, options,
                                options_valid)
  b, p = prompt.shape
  o, l = options.shape
  cfg = model.cfg
  positions = model_lib.positions_from_mask(prompt_valid)
  if l == 1:  # single-token answers: one forward pass, no cache
    out = model(prompt, positions, model_lib.causal_mask(prompt_valid), last_only=True)
    return jax.nn.log_softmax(out.logits[:, -1].astype(jnp.float32), axis=-1)[:, options[:, 0]]
  n = o * l
  mask = jnp.concatenate([model_lib.causal_mask(prompt_valid), jnp.zeros((b, p, n), bool)], axis=2)
  cache = model_lib.KVCache.zeros(cfg, b, p + n)
  out = model(prompt, positions, mask, cache, last_only=True, prefill=True)
  first = jax.nn.log_softmax(out.logits[:, -1].astype(jnp.float32), axis=-1)  # [B, V]
  total = first[:, options[:, 0]]  # [B, O]
  return total + _rest_of_options(model, out.cache, prompt_valid, positions[:, -1:], options,
                                  options_valid)


def _rest_of_options(model, cache, earlier_valid, last_position, options, options_valid):
  """Summed log-probs [B, O] of each option's tokens after its first: all options packed as one
  [O * L] chunk written after the cache's first C slots (earlier_valid [B, C] marks the real ones,
  last_position [B, 1] is the last real token's position), option o's token i at o * L + i, each
  attending to those slots and its own earlier tokens only (a block-diagonal mask), counted from
  the prompt's end."""
  b, c = earlier_valid.shape
  o, l = options.shape
  n = o * l
  step_in = jnp.broadcast_to(options.reshape(1, n), (b, n))
  within = jnp.tile(jnp.arange(l, dtype=jnp.int32), o)  # i of each packed token
  option_of = jnp.repeat(jnp.arange(o), l)
  own = (option_of[:, None] == option_of[None, :]) & (within[:, None] >= within[None, :])
  own = own & options_valid.reshape(1, n)  # [N, N]: same option, not later, a real token
  keys = jnp.concatenate([jnp.broadcast_to(earlier_valid[:, None, :], (b, n, c)),
                          jnp.broadcast_to(own[None], (b, n, n))], axis=2)  # [B, N, C + N]
  logits = model(step_in, last_position + 1 + within[None], keys, cache, query_slots=c + within).logits
  logp = jax.nn.log_softmax(logits.reshape(b, o, l, -1)[:, :, :-1].astype(jnp.float32), axis=-1)
  rest = jnp.take_along_axis(logp, jnp.broadcast_to(options[None, :, 1:, None], (b, o, l - 1, 1)),
                             axis=-1)[..., 0] * options_valid[None, :, 1:]
  return rest.sum(axis=2)


def shared_prefix_cache(model: model_lib.Transformer, prefix: jax.Array, prefix_valid: jax.Array,
                        batch: int, length: int) -> model_lib.KVCache:
  """The KV cache of a prefix every row shares, in a cache of `length` >= S slots whose next write
  is at slot S. prefix [R, S]: R identical rows, R dividing `batch`; each is prefilled and then
  serves batch / R consecutive rows. With R = the number of batch shards, every shard prefills its
  own copy alongside its own rows, as the rows themselves are computed: no shard waits on another,
  and the arithmetic is the same whichever processes hold the shards."""
  r, s = prefix.shape
  mask = jnp.concatenate([model_lib.causal_mask(prefix_valid),
                          jnp.zeros((r, s, length - s), bool)], axis=2)
  cache = model_lib.KVCache.zeros(model.cfg, r, length)
  cache = model(prefix, model_lib.positions_from_mask(prefix_valid), mask, cache, last_only=True,
                prefill=True).cache
  rows = lambda a: jnp.repeat(a, batch // r, axis=a.ndim - 4)  # [(L,) R, ...] -> [(L,) B, ...]
  return cache._replace(k=jax.tree.map(rows, cache.k), v=jax.tree.map(rows, cache.v))


def _after_shared_prefix(model, prefix, prefix_valid, prompt, prompt_valid, options, options_valid):
  """`option_log_probs` for prompts that continue a shared prefix: the cache holds the prefix
  (S slots), then the prompts (P, left-padded), then the packed options (O * L when L > 1).
  Positions count the prefix's real tokens first. Not for sliding-window layers: their window
  counts cache slots, and the prompts' padding would sit between the prefix and the prompt."""
  (b, p), (o, l), (r, s) = prompt.shape, options.shape, prefix.shape
  n = o * l if l > 1 else 0
  cache = shared_prefix_cache(model, prefix, prefix_valid, b, s + p + n)
  row_prefix = jnp.repeat(prefix_valid, b // r, axis=0)  # [B, S]: each row's copy of the prefix
  positions = (jnp.sum(row_prefix, axis=1, keepdims=True, dtype=jnp.int32)
               + model_lib.positions_from_mask(prompt_valid))
  before = jnp.broadcast_to(row_prefix[:, None, :], (b, p, s))
  mask = jnp.concatenate([before, model_lib.causal_mask(prompt_valid), jnp.zeros((b, p, n), bool)],
                         axis=2)
  out = model(prompt, positions, mask, cache, last_only=True)
  first = jax.nn.log_softmax(out.logits[:, -1].astype(jnp.float32), axis=-1)  # [B, V]
  total = first[:, options[:, 0]]  # [B, O]
  if l == 1:
    return total
  earlier = jnp.concatenate([row_prefix, prompt_valid], axis=1)  # [B, S + P]
  return total + _rest_of_options(model, out.cache, earlier, positions[:, -1:], options, options_valid)


def jit_option_log_probs(model: model_lib.Transformer, mesh: jax.sharding.Mesh,
                         shared_prefix: bool = False):
  """`fn(state, prompt, valid, options, options_valid) -> [B, O]` (`option_log_probs`), jitted with
  the state sharded by the rules and the prompts over the batch axes, run with the mesh set. With
  `shared_prefix`: `fn(state, prefix, prefix_valid, prompt, ...)`, the prefix's copies [R, S] over
  the batch axes too."""
  graphdef = nnx.graphdef(model)
  state_sh, batch, repl = shd.model_shardings(model, mesh)

  def whole(state, prompt, valid, options, options_valid):
    return option_log_probs(nnx.merge(graphdef, state), prompt, valid, options, options_valid)

  def after_prefix(state, prefix, prefix_valid, prompt, valid, options, options_valid):
    return option_log_probs(nnx.merge(graphdef, state), prompt, valid, options, options_valid,
                            prefix, prefix_valid)

  shardings = (state_sh,) + ((batch, batch) if shared_prefix else ()) + (batch, batch, repl, repl)
  fn = after_prefix if shared_prefix else whole
  return shd.on_mesh(jax.jit(fn, in_shardings=shardings, out_shardings=batch), mesh, shardings)
