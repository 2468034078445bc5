"""The option-scoring kernel: log P(option | prompt) for every prompt and every candidate answer, with
the prompts prefilled into a KV cache once, so multi-token answers cost a few decode steps rather than
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

  The prompts are prefilled into a KV cache once; all options are then scored from copies of it.
  """
  b, p = prompt.shape
  o, l = options.shape
  cfg = model.cfg
  positions = model_lib.positions_from_mask(prompt_valid)
  if l == 1:  # single-token answers: one forward pass, no cache
    out = model(prompt, positions, model_lib.causal_mask(prompt_valid), last_only=True)
    return jax.nn.log_softmax(out.logits[:, -1].astype(jnp.float32), axis=-1)[:, options[:, 0]]
  mask = jnp.concatenate([model_lib.causal_mask(prompt_valid), jnp.zeros((b, p, l), bool)], axis=2)
  cache = model_lib.KVCache.zeros(cfg, b, p + l)
  out = model(prompt, positions, mask, cache, last_only=True, prefill=True)
  first = jax.nn.log_softmax(out.logits[:, -1].astype(jnp.float32), axis=-1)  # [B, V]
  total = first[:, options[:, 0]]  # [B, O]
  rep = lambda x: jnp.repeat(x, o, axis=0)
  cache = out.cache._replace(k=tuple(map(rep, out.cache.k)), v=tuple(map(rep, out.cache.v)))
  opt = jnp.tile(options, (b, 1))  # [B*O, L], row r = prompt r // O, option r % O
  opt_valid = jnp.tile(options_valid, (b, 1))
  pos = rep(positions[:, -1:]) + 1 + jnp.arange(l)[None]
  keys = jnp.concatenate([rep(prompt_valid), opt_valid], axis=1)  # [B*O, P + L]
  causal = jnp.concatenate([jnp.ones((l, p), bool), jnp.tril(jnp.ones((l, l), bool))], axis=1)
  step = model(opt, pos, keys[:, None, :] & causal[None], cache)
  logp = jax.nn.log_softmax(step.logits[:, :-1].astype(jnp.float32), axis=-1)  # predicts opt[:, 1:]
  rest = jnp.take_along_axis(logp, opt[:, 1:, None], axis=-1)[..., 0] * opt_valid[:, 1:]
  return total + rest.sum(axis=1).reshape(b, o)


def jit_option_log_probs(model: model_lib.Transformer, mesh: jax.sharding.Mesh):
  """`fn(state, prompt, valid, options, options_valid) -> [B, O]` (`option_log_probs`), jitted with
  the state sharded by the rules and the prompts over the batch axes, run with the mesh set."""
  graphdef = nnx.graphdef(model)
  state_sh, batch, repl = shd.model_shardings(model, mesh)

  def fn(state, prompt, valid, options, options_valid):
    return option_log_probs(nnx.merge(graphdef, state), prompt, valid, options, options_valid)

  shardings = (state_sh, batch, batch, repl, repl)
  return shd.on_mesh(jax.jit(fn, in_shardings=shardings, out_shardings=batch), mesh, shardings)
