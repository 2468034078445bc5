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
                     options: jax.Array, options_valid: jax.Array) -> jax.Array:
  """log P(option | prompt) for every prompt and option: prompt [B, P] left-padded, options [O, L]
  right-padded token ids (options_valid marks real tokens) -> [B, O] float32.

  The prompts are prefilled into a KV cache once; then all O options of a prompt are fed together
  as one [O * L] chunk after it, each option attending to the prompt and to its own earlier tokens
  only (a block-diagonal mask) and counted from the prompt's end. The cache holds P + O * L slots
  per prompt rather than O copies of P + L (d-RLAIF's ten answers after a long prompt: a tenth).
  """
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
  step_in = jnp.broadcast_to(options.reshape(1, n), (b, n))  # option o's token i at o * L + i
  within = jnp.tile(jnp.arange(l, dtype=jnp.int32), o)  # i of each packed token
  option_of = jnp.repeat(jnp.arange(o), l)
  own = (option_of[:, None] == option_of[None, :]) & (within[:, None] >= within[None, :])
  own = own & options_valid.reshape(1, n)  # [N, N]: same option, not later, a real token
  keys = jnp.concatenate([jnp.broadcast_to(prompt_valid[:, None, :], (b, n, p)),
                          jnp.broadcast_to(own[None], (b, n, n))], axis=2)  # [B, N, P + N]
  step = model(step_in, positions[:, -1:] + 1 + within[None], keys, out.cache,
               query_slots=p + within)
  logp = jax.nn.log_softmax(step.logits.reshape(b, o, l, -1)[:, :, :-1].astype(jnp.float32), axis=-1)
  rest = jnp.take_along_axis(logp, jnp.broadcast_to(options[None, :, 1:, None], (b, o, l - 1, 1)),
                             axis=-1)[..., 0] * options_valid[None, :, 1:]
  return total + rest.sum(axis=2)


def jit_option_log_probs(model: model_lib.Transformer, mesh: jax.sharding.Mesh):
  """`fn(state, prompt, valid, options, options_valid) -> [B, O]` (`option_log_probs`), jitted with
  the state sharded by the rules and the prompts over the batch axes, run with the mesh set."""
  graphdef = nnx.graphdef(model)
  state_sh, batch, repl = shd.model_shardings(model, mesh)

  def fn(state, prompt, valid, options, options_valid):
    return option_log_probs(nnx.merge(graphdef, state), prompt, valid, options, options_valid)

  shardings = (state_sh, batch, batch, repl, repl)
  return shd.on_mesh(jax.jit(fn, in_shardings=shardings, out_shardings=batch), mesh, shardings)
