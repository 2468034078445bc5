"""Supervised fine-tuning: next-token cross-entropy on the response tokens of (prompt, response)
demonstrations (or of constitutional revisions), prompts left out of the loss.

Batches are the RL rollout's layout: left-padded prompts [B, P] and right-padded responses [B, N]
ending with the end-of-turn token, so the loss runs the same teacher-forced scorer as PPO.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlaif_jax.generation import scoring
from rlaif_jax.generation import text as text_lib
from rlaif_jax.models import transformer as model_lib
from rlaif_jax.training import step as step_lib
from rlaif_jax.infra.errors import UserError


class DemonstrationBatch(NamedTuple):
  prompt: Any  # [B, P] left-padded
  prompt_valid: Any
  response: Any  # [B, N] right-padded, ends with the stop token
  mask: Any


def sft_loss(model: model_lib.Transformer, batch: DemonstrationBatch):
  """Mean negative log-likelihood per response token."""
  s = scoring.token_scores(model, batch.prompt, batch.prompt_valid, batch.response, batch.mask)
  nll = -scoring.masked_mean(s.log_probs, batch.mask)
  return nll, {'loss': nll, 'tokens': jnp.sum(batch.mask).astype(jnp.float32)}


def make_train_step(model: model_lib.Transformer, optimizer: optax.GradientTransformation,
                    mesh: jax.sharding.Mesh):
  """Jitted, sharded, donating SFT step (see `step.make_train_step`)."""
  return step_lib.make_train_step(model, optimizer, mesh, sft_loss)


def encode(tokenizer: Any, prompts: Sequence[str], responses: Sequence[str], prompt_length: int,
           response_length: int, chat: bool = True) -> DemonstrationBatch:
  """Token arrays for demonstrations; responses are cut to `response_length` tokens including the
  end-of-turn token (the tokenizer's eos), a prompt longer than `prompt_length`
  loses the start of its user text (`text.encode_texts`)."""
  eos = tokenizer.eos_token_id
  if eos is None:
    raise UserError('SFT needs a tokenizer with an eos token to end responses.')
  pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
  prompt_ids = text_lib.encode_texts(tokenizer, prompts, chat, max_tokens=prompt_length)
  tokens, valid = text_lib.left_pad(prompt_ids, prompt_length, pad)
  response = np.full((len(responses), response_length), pad, np.int32)
  mask = np.zeros((len(responses), response_length), bool)
  for i, text in enumerate(responses):
    ids = (tokenizer.encode(text, add_special_tokens=False) + [eos])[:response_length]
    response[i, :len(ids)], mask[i, :len(ids)] = ids, True
  return DemonstrationBatch(tokens, valid, response, mask)
