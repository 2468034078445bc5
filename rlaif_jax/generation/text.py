"""Strings in, strings out: prompts tokenized (with the chat template or as plain text), bucketed and
left-padded into [B, P] arrays, and `TextGenerator`, which runs the jitted sampler on them and decodes
the responses. Host-side (NumPy and tokenizers); the sampling itself is `sampler`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Sequence

import jax
import numpy as np
from flax import nnx

from rlaif_jax.generation import sampler as sampler_lib
from rlaif_jax.generation.sampler import SamplingConfig
from rlaif_jax.infra import distributed
from rlaif_jax.infra import sharding as shd
from rlaif_jax.infra.errors import UserError
from rlaif_jax.models import transformer as model_lib


def bucket_length(n: int, buckets: Sequence[int]) -> int:
  """Smallest bucket >= n; a clear error when n exceeds the largest."""
  for b in sorted(buckets):
    if n <= b:
      return b
  raise UserError(f'Prompt of {n} tokens exceeds the largest prompt bucket {max(buckets)}; add a '
                  f'larger bucket to the sampling config or truncate the prompts.')


def left_pad(token_lists: Sequence[Sequence[int]], length: int, pad_id: int):
  """Token lists -> (tokens [B, length] int32, valid [B, length] bool), right-aligned (left padding)."""
  tokens = np.full((len(token_lists), length), pad_id, np.int32)
  valid = np.zeros((len(token_lists), length), bool)
  for i, ids in enumerate(token_lists):
    if len(ids) > length:
      raise ValueError(f'Prompt {i} has {len(ids)} tokens, more than the length {length}.')
    if len(ids):
      tokens[i, length - len(ids):] = ids
      valid[i, length - len(ids):] = True
  return tokens, valid


def encode_texts(tokenizer: Any, prompts: Sequence[str], chat: bool, max_tokens: int = 0
                 ) -> list[list[int]]:
  """Token ids of each prompt: as a user turn with the chat template and generation prompt when
  `chat`, else the plain text without special tokens. With `max_tokens`, a longer prompt loses the
  start of its user text, never the template's BOS, header or generation prompt (plain text keeps
  its last max_tokens tokens)."""
  if not chat:
    ids = [tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    return [x[-max_tokens:] for x in ids] if max_tokens else ids
  out = []
  for p in prompts:
    ids = _chat_ids(tokenizer, p)
    out.append(_fit_chat(tokenizer, p, ids, max_tokens) if max_tokens and len(ids) > max_tokens
               else ids)
  return out


def _chat_ids(tokenizer: Any, text: str) -> list[int]:
  return list(tokenizer.apply_chat_template([{'role': 'user', 'content': text}],
                                            add_generation_prompt=True, tokenize=True,
                                            return_dict=True)['input_ids'])


def _fit_chat(tokenizer: Any, text: str, ids: list[int], max_tokens: int) -> list[int]:
  """The templated prompt within max_tokens, its user text cut from the start (tokens re-counted
  after each cut, since a cut can tokenize differently at its edge)."""
  content = tokenizer.encode(text, add_special_tokens=False)
  overhead = len(ids) - len(content)
  if overhead >= max_tokens:
    raise UserError(f'The chat template alone takes {overhead} tokens, the prompt length is '
                    f'{max_tokens}; raise the prompt length (e.g. rl.prompt_length).')
  keep = max_tokens - overhead
  while keep > 0:
    ids = _chat_ids(tokenizer, tokenizer.decode(content[-keep:]))
    if len(ids) <= max_tokens:
      return ids
    keep -= len(ids) - max_tokens
  raise UserError(f'Could not fit a prompt into {max_tokens} tokens with its chat template; raise '
                  f'the prompt length (e.g. rl.prompt_length).')


class PromptBatch(NamedTuple):
  """A batch of prompts: left-padded tokens [B, P], validity [B, P], and their texts (for a judge)."""
  tokens: np.ndarray
  valid: np.ndarray
  texts: Sequence[str] | None = None


def encode_prompt_batch(tokenizer: Any, texts: Sequence[str], length: int, chat: bool = True
                        ) -> PromptBatch:
  """Tokenize prompts (`encode_texts`) and left-pad them to `length`; a longer prompt loses the start
  of its user text (the chat template's tokens stay)."""
  ids = encode_texts(tokenizer, texts, chat, max_tokens=length)
  pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
  tokens, valid = left_pad(ids, length, pad)
  return PromptBatch(tokens, valid, list(texts))


def stop_tokens(tokenizer: Any) -> tuple[int, ...]:
  """The ids that end a response: the checkpoint's end tokens (`loading.end_token_ids`, set on the
  tokenizer when a folder is loaded), else the tokenizer's eos."""
  listed = getattr(tokenizer, 'end_token_ids', None)
  if listed:
    return tuple(int(i) for i in listed)
  eos = tokenizer.eos_token_id
  return () if eos is None else (int(eos),)


class TextGenerator:
  """Strings in, strings out: chat template (optional), bucketing, the jitted sampler, decoding."""

  def __init__(self, model: model_lib.Transformer, tokenizer: Any, mesh: jax.sharding.Mesh,
               prompt_buckets: Sequence[int] = (64, 128, 256, 512, 1024, 2048)):
    self.model, self.tokenizer, self.mesh = model, tokenizer, mesh
    self.state = nnx.state(model)
    self.buckets = tuple(prompt_buckets)
    self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    self.batch_multiple = shd.batch_shards(mesh, model.cfg.logical_axis_rules)
    self._samplers: dict[SamplingConfig, Any] = {}

  def encode(self, prompts: Sequence[str], chat: bool) -> list[list[int]]:
    return encode_texts(self.tokenizer, prompts, chat)

  def stop_tokens(self) -> tuple[int, ...]:
    return stop_tokens(self.tokenizer)

  def __call__(self, prompts: Sequence[str], cfg: SamplingConfig, key: jax.Array,
               chat: bool = True) -> list[str]:
    if not cfg.stop_tokens:
      cfg = dataclasses.replace(cfg, stop_tokens=self.stop_tokens())
    ids = self.encode(prompts, chat)
    length = bucket_length(max(len(x) for x in ids), self.buckets)
    ids = shd.fill_batch(ids, self.batch_multiple)
    tokens, valid = left_pad(ids, length, self.pad_id)
    if cfg not in self._samplers:
      self._samplers[cfg] = sampler_lib.make_sampler(self.model, self.mesh, cfg, self.pad_id)
    out = distributed.to_host(self._samplers[cfg](self.state, tokens, valid, key))
    texts = []
    for row, m in zip(out.tokens[:len(prompts)], out.mask[:len(prompts)]):
      kept = [int(t) for t, k in zip(row, m) if k and int(t) not in cfg.stop_tokens]
      texts.append(self.tokenizer.decode(kept, skip_special_tokens=True))
    return texts
