"""The sampler: a jitted KV-cache decoder, as pure functions of the model and the prompts.

Prompts are left-padded to a bucket length P, so every row's last prompt token sits at P - 1 and each
decode step writes the cache at the same index for the whole batch; positions count only real tokens,
so padding never shifts them. One prefill pass fills the cache with the whole prompt batch, then a
`lax.while_loop` decodes until every row has emitted a stop token or `max_new_tokens` are out,
testing that every `decode_chunk` steps (one test per step on CPU; on an accelerator each test is a
device-to-host sync, so steps run unrolled in chunks between them).

Groups (GRPO, RLOO, online DPO: each prompt repeated G times in adjacent rows): `group=G` prefills
each distinct prompt once and copies its cache to its G rows, which then sample independently.

Log-probs are those of the temperature-scaled distribution softmax(logits / T) (T = 1 when greedy),
before top-k / top-p truncation, so `scoring.token_scores(..., temperature=T)` on the sampled tokens
returns them again. Shapes: B prompts, P prompt length, N = max_new_tokens, V vocab.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from rlaif_jax.infra import sharding as shd
from rlaif_jax.models import transformer as model_lib
from rlaif_jax.infra.errors import UserError


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  max_new_tokens: int = 64
  temperature: float = 1.0  # 0 = greedy
  top_k: int = 0  # 0 = off
  top_p: float = 1.0  # 1 = off
  stop_tokens: tuple[int, ...] = ()  # usually the tokenizer's eos and end-of-turn ids
  decode_chunk: int = 0  # decode steps between "has every row stopped?" tests; 0 = by platform
  early_exit: bool = True  # stop once every row has stopped (False: always max_new_tokens steps)

  def __post_init__(self):
    if self.max_new_tokens < 1:
      raise UserError(f'max_new_tokens must be >= 1, got {self.max_new_tokens}.')
    if self.decode_chunk < 0:
      raise UserError(f'decode_chunk must be >= 0 (0 = chosen by platform), got {self.decode_chunk}.')
    if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
      raise UserError(f'Bad sampling settings {self}: need temperature >= 0, top_k >= 0, '
                      f'0 < top_p <= 1.')


class Samples(NamedTuple):
  """Sampled responses: what `sample` returns."""
  tokens: jax.Array  # [B, N] int32 generated tokens (pad after the stop token)
  log_probs: jax.Array  # [B, N] float32 log-prob of each token under softmax(logits / T)
  mask: jax.Array  # [B, N] bool, True for generated tokens up to and including the stop token
  steps: jax.Array  # int32 scalar: tokens the loop produced per row (prefill's included), < N + chunk


def filter_logits(logits: jax.Array, top_k: int, top_p: float) -> jax.Array:
  """Set logits outside the top-k / nucleus (top-p) set to -inf. logits: [B, V] float32."""
  neg = jnp.finfo(logits.dtype).min
  if top_k and top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, neg, logits)
  if top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each sorted token
    kept = before < top_p  # always keeps the most likely token
    cutoff = jnp.min(jnp.where(kept, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < cutoff, neg, logits)
  return logits


def argmax(logits: jax.Array) -> jax.Array:
  """First index of the maximum over the last axis: [B, V] -> [B]. Two plain reductions, which XLA
  runs several times faster on CPU than `jnp.argmax`'s variadic (value, index) reduction."""
  top = jnp.max(logits, axis=-1, keepdims=True)
  iota = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
  return jnp.min(jnp.where(logits == top, iota, logits.shape[-1]), axis=-1)


def choose(logits: jax.Array, key: jax.Array, cfg: SamplingConfig) -> tuple[jax.Array, jax.Array]:
  """Next token and its log-prob under softmax(logits / T). logits: [B, V] -> ([B], [B])."""
  logits = logits.astype(jnp.float32)
  if cfg.temperature == 0:
    token = argmax(logits)
    scaled = logits
  else:
    scaled = logits / cfg.temperature
    token = jax.random.categorical(key, filter_logits(scaled, cfg.top_k, cfg.top_p), axis=-1)
  logp = jax.nn.log_softmax(scaled, axis=-1)
  return token.astype(jnp.int32), jnp.take_along_axis(logp, token[:, None], axis=-1)[:, 0]


CHUNK_BY_PLATFORM = {'cpu': 1}  # elsewhere DEFAULT_CHUNK
DEFAULT_CHUNK = 8


def decode_chunk(cfg: SamplingConfig) -> int:
  """Decode steps per stop test: `cfg.decode_chunk`, or by the traced program's platform when 0."""
  return cfg.decode_chunk or CHUNK_BY_PLATFORM.get(shd.platform(), DEFAULT_CHUNK)


def _is_stop(token: jax.Array, stop_tokens: Sequence[int]) -> jax.Array:
  if not stop_tokens:
    return jnp.zeros(token.shape, bool)
  return jnp.isin(token, jnp.asarray(stop_tokens, jnp.int32))


class Decoding(NamedTuple):
  """The sampler's loop state between decode steps."""
  i: jax.Array  # int32: response tokens produced so far
  cache: model_lib.KVCache
  key_valid: jax.Array  # [B, P + N] bool: cache slots that may be attended
  done: jax.Array  # [B] bool: the row has emitted a stop token
  token: jax.Array  # [B] int32: the last token, fed at the next step
  pos: jax.Array  # [B] int32: its position
  tokens: jax.Array  # [B, N]
  log_probs: jax.Array  # [B, N]
  mask: jax.Array  # [B, N]
  key: jax.Array


def prefill(model: model_lib.Transformer, prompt: jax.Array, prompt_valid: jax.Array, key: jax.Array,
            cfg: SamplingConfig, pad_id: int = 0, group: int = 1, length: int | None = None
            ) -> Decoding:
  """One pass over the left-padded prompts [B, P] fills the KV cache and picks the first token.

  group G > 1: rows come in groups of G repeats of one prompt; only each group's first row is
  prefilled and its cache and last logits are copied to the G rows. length: response slots in the
  cache and outputs (default max_new_tokens)."""
  rows, p = prompt.shape
  if rows % group:
    raise UserError(f'{rows} prompt rows are not whole groups of {group} samples per prompt.')
  n = length or cfg.max_new_tokens
  rules = model.cfg.logical_axis_rules
  constrain = lambda c: c.map_arrays(lambda x, axes: shd.constrain(x, axes, rules))
  distinct, distinct_valid = prompt[::group], prompt_valid[::group]  # [B / G, P]
  b = rows // group
  cache = constrain(model_lib.KVCache.zeros(model.cfg, b, p + n))
  positions = model_lib.positions_from_mask(distinct_valid)
  prefill_mask = model_lib.causal_mask(distinct_valid)
  prefill_mask = jnp.concatenate([prefill_mask, jnp.zeros((b, p, n), bool)], axis=2)
  out = model(distinct, positions, prefill_mask, cache, last_only=True, prefill=True,
              valid=distinct_valid)
  cache, logits, last_pos = out.cache, out.logits[:, -1], positions[:, -1]
  if group > 1:
    copy = lambda x, axis=0: jnp.repeat(x, group, axis=axis)
    cache = constrain(cache.map_arrays(lambda x, axes: copy(x, axes.index('batch'))))
    logits, last_pos = copy(logits), copy(last_pos)
  key_valid = jnp.concatenate([prompt_valid, jnp.zeros((rows, n), bool)], axis=1)  # [B, P + N]
  key, step_key = jax.random.split(key)
  token, logp = choose(logits, step_key, cfg)
  return Decoding(i=jnp.int32(1), cache=cache, key_valid=key_valid,
                  done=_is_stop(token, cfg.stop_tokens), token=token, pos=last_pos + 1,
                  tokens=jnp.full((rows, n), pad_id, jnp.int32).at[:, 0].set(token),
                  log_probs=jnp.zeros((rows, n), jnp.float32).at[:, 0].set(logp),
                  mask=jnp.zeros((rows, n), bool).at[:, 0].set(True), key=key)


def decode_step(model: model_lib.Transformer, s: Decoding, cfg: SamplingConfig,
                pad_id: int = 0) -> Decoding:
  """Feed the last token, write its keys and values into the cache, pick the next token."""
  p = s.key_valid.shape[1] - s.tokens.shape[1]
  key_valid = s.key_valid.at[:, p + s.i - 1].set(True)  # the token fed now becomes attendable
  out = model(s.token[:, None], s.pos[:, None], key_valid[:, None, :], s.cache)
  key, step_key = jax.random.split(s.key)
  new, logp = choose(out.logits[:, 0], step_key, cfg)
  live = ~s.done
  new = jnp.where(live, new, pad_id)
  return Decoding(i=s.i + 1, cache=out.cache, key_valid=key_valid,
                  done=s.done | _is_stop(new, cfg.stop_tokens), token=new, pos=s.pos + 1,
                  tokens=s.tokens.at[:, s.i].set(new),
                  log_probs=s.log_probs.at[:, s.i].set(jnp.where(live, logp, 0.0)),
                  mask=s.mask.at[:, s.i].set(live), key=key)


def sample(model: model_lib.Transformer, prompt: jax.Array, prompt_valid: jax.Array, key: jax.Array,
           cfg: SamplingConfig, pad_id: int = 0, group: int = 1) -> Samples:
  """Sample responses. prompt, prompt_valid: [B, P], left-padded; group: adjacent rows that repeat
  one prompt (see `prefill`). Call under jit (see `make_sampler`)."""
  n, chunk = cfg.max_new_tokens, decode_chunk(cfg)
  length = 1 + -(-(n - 1) // chunk) * chunk  # room for whole chunks; the overshoot is cut off
  model = model_lib.for_decoding(model)

  def chunk_of_steps(s: Decoding) -> Decoding:
    if chunk == 1:
      return decode_step(model, s, cfg, pad_id)
    return jax.lax.fori_loop(0, chunk, lambda _, s: decode_step(model, s, cfg, pad_id), s,
                             unroll=True)

  def go_on(s: Decoding) -> jax.Array:
    return (s.i < n) & ~jnp.all(s.done) if cfg.early_exit else s.i < n

  s = jax.lax.while_loop(go_on, chunk_of_steps,
                         prefill(model, prompt, prompt_valid, key, cfg, pad_id, group, length))
  return Samples(s.tokens[:, :n], s.log_probs[:, :n], s.mask[:, :n], s.i)


def make_sampler(model: model_lib.Transformer, mesh: jax.sharding.Mesh, cfg: SamplingConfig,
                 pad_id: int = 0, group: int = 1):
  """`fn(state, prompt, prompt_valid, key) -> Samples`, jitted with explicit shardings; group: see
  `prefill`.

  Compiles once per prompt shape [B, P]; bucket P (see `bucket_length`) to bound recompiles.
  """
  graphdef = nnx.graphdef(model)
  state_sh, batch, repl = shd.model_shardings(model, mesh)

  def fn(state, prompt, prompt_valid, key):
    return sample(nnx.merge(graphdef, state), prompt, prompt_valid, key, cfg, pad_id, group)

  shardings = (state_sh, batch, batch, repl)
  out = Samples(batch, batch, batch, repl)
  return shd.on_mesh(jax.jit(fn, in_shardings=shardings, out_shardings=out), mesh, shardings)
