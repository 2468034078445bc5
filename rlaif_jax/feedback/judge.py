"""The judge: a model with its tokenizer on a mesh; strings in, soft preferences and direct rewards out.

It builds the request texts (`requests`), cuts over-long contexts and responses, batches and buckets the
encoded requests, runs the option-scoring kernel (`option_scoring`) and turns answer log-probs into
preferences (`preferences`). Chain-of-thought labels first let the judge write a rationale per order.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlaif_jax.feedback import option_scoring
from rlaif_jax.feedback.preferences import Preference, expected_score_reward, soft_preference
from rlaif_jax.feedback.requests import (RATIONALE_REQUEST, JudgeConfig, direct_request,
                                         pairwise_request, question_request)
from rlaif_jax.generation import text as text_lib
from rlaif_jax.generation.sampler import SamplingConfig
from rlaif_jax.infra import distributed
from rlaif_jax.infra import sharding as shd
from rlaif_jax.models import transformer as model_lib
from rlaif_jax.infra.errors import UserError


def _text_or_none(x: Any) -> str | None:
  return x if isinstance(x, str) else None


class Judge:
  """A judge model with its tokenizer on a mesh; strings in, preferences and rewards out."""

  def __init__(self, model: model_lib.Transformer, tokenizer: Any, mesh: jax.sharding.Mesh,
               cfg: JudgeConfig = JudgeConfig(), name: str = 'judge'):
    self.model, self.tokenizer, self.mesh, self.cfg, self.name = model, tokenizer, mesh, cfg, name
    self.state = nnx.state(model)
    self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    self.choice_ids = self._single_tokens(['1', '2'])
    eos = [tokenizer.eos_token_id] if (cfg.chat_template and tokenizer.eos_token_id is not None) else []
    self.score_options = [tokenizer.encode(str(i), add_special_tokens=False) + eos for i in range(1, 11)]
    self.batch_multiple = shd.batch_shards(mesh, model.cfg.logical_axis_rules)
    self._option_log_probs = option_scoring.jit_option_log_probs(model, mesh)
    self._after_prefix = option_scoring.jit_option_log_probs(model, mesh, shared_prefix=True)
    self.truncated = 0

  def for_task(self, task: str) -> 'Judge':
    """The same judge (model, state and compiled scoring shared) asked about another task."""
    other = copy.copy(self)
    other.cfg, other.truncated = dataclasses.replace(self.cfg, task=task), 0
    return other

  def _single_tokens(self, texts: Sequence[str]) -> list[int]:
    ids = [self.tokenizer.encode(t, add_special_tokens=False) for t in texts]
    bad = [t for t, i in zip(texts, ids) if len(i) != 1]
    if bad:
      raise UserError(f'The judge tokenizer splits answer tokens {bad} into several tokens.')
    return [i[0] for i in ids]

  def _cut(self, text: str, context: bool = False) -> str:
    ids = self.tokenizer.encode(text, add_special_tokens=False)
    limit = self.cfg.max_context_tokens if context else self.cfg.max_response_tokens
    if len(ids) <= limit:
      return text
    self.truncated += 1
    if context:
      return '... ' + self.tokenizer.decode(ids[-limit:])
    return self.tokenizer.decode(ids[:limit]) + ' ...'

  def encode(self, request: str, answer_prefix: str) -> list[int]:
    tok = self.tokenizer
    if self.cfg.chat_template:
      ids = tok.apply_chat_template([{'role': 'user', 'content': request}], tokenize=True,
                                    add_generation_prompt=True, return_dict=True)['input_ids']
      return list(ids) + tok.encode(answer_prefix, add_special_tokens=False)
    return tok.encode(request + '\n' + answer_prefix, add_special_tokens=False)

  def answer_log_probs(self, requests: Sequence[list[int]], options: Sequence[list[int]]) -> np.ndarray:
    """[N, O] log-probs of each answer option after each encoded request (batched, bucketed, jitted).

    The requests' common beginning (chat template, preamble, exemplars) is prefilled once for the
    batch (once per batch shard on a mesh) when that fills fewer token slots than prefilling it in
    every row (`shared_prefix`)."""
    rows = shd.fill_batch(list(requests), self.batch_multiple)
    width = max(len(o) for o in options)
    opt = np.full((len(options), width), self.pad_id, np.int32)
    opt_valid = np.zeros((len(options), width), bool)
    for i, o in enumerate(options):
      opt[i, :len(o)], opt_valid[i, :len(o)] = o, True
    shared = self.shared_prefix(rows)
    length = text_lib.bucket_length(max(len(r) for r in rows) - shared, self.cfg.prompt_buckets)
    tokens, valid = text_lib.left_pad([r[shared:] for r in rows], length, self.pad_id)
    if shared:
      prefix, prefix_valid = text_lib.left_pad(  # one copy per batch shard (see shared_prefix_cache)
          [rows[0][:shared]] * self.batch_multiple,
          text_lib.bucket_length(shared, self.cfg.prompt_buckets), self.pad_id)
      out = self._after_prefix(self.state, prefix, prefix_valid, tokens, valid, opt, opt_valid)
    else:
      out = self._option_log_probs(self.state, tokens, valid, opt, opt_valid)
    return distributed.to_host(out)[:len(requests)]

  def shared_prefix(self, rows: Sequence[list[int]]) -> int:
    """How many leading tokens of the encoded requests to prefill once for all of them: their
    common prefix (less one token, so every request keeps one to score from), when that fills fewer
    token slots, padding counted; 0 to prefill every request whole."""
    if not self.cfg.share_prefix or len(rows) < 2 or 'sliding' in self.model.cfg.layer_types:
      return 0  # sliding windows count cache slots: padding between prefix and request would shift them
    n = min(len(os.path.commonprefix([list(r) for r in rows])), min(len(r) for r in rows) - 1)
    buckets, longest = self.cfg.prompt_buckets, max(len(r) for r in rows)
    whole = len(rows) * text_lib.bucket_length(longest, buckets)
    split = (self.batch_multiple * text_lib.bucket_length(n, buckets)  # a copy per batch shard
             + len(rows) * text_lib.bucket_length(longest - n, buckets)) if n > 0 else whole
    return n if split < whole else 0

  def pairwise(self, contexts: Sequence[Any], responses_a: Sequence[Any], responses_b: Sequence[Any],
               principles: Sequence[str | None] | None = None,
               rationales: Sequence[tuple[str, str] | None] | None = None) -> Preference:
    """Soft preferences P(A better than B) for each (context, A, B).

    rationales: optional (rationale for the A-first order, rationale for the B-first order) per pair,
    inserted before the answer (the second step of chain-of-thought labeling).
    """
    n = len(contexts)
    principles = principles or [None] * n
    rationales = rationales or [None] * n
    self.truncated = 0
    skipped = np.array([any(_text_or_none(x) is None for x in row)
                        for row in zip(contexts, responses_a, responses_b)], bool)
    live = [i for i in range(n) if not skipped[i]]
    p = np.full(n, 0.5, np.float32)
    p_ab, p_ba = np.full(n, 0.5, np.float32), np.full(n, np.nan, np.float32)
    consistent = np.zeros(n, bool)
    if live:
      reqs = []
      for i in live:
        r_ab, r_ba = rationales[i] or (None, None)
        for first, second, rationale in self._orders(responses_a[i], responses_b[i], r_ab, r_ba):
          reqs.append(self.encode(pairwise_request(
              self.cfg, self._cut(contexts[i], context=True), first, second, principles[i],
              rationale), self.cfg.answer_prefix))
      lp = self.answer_log_probs(reqs, [[t] for t in self.choice_ids])
      first = lp[0::2] if self.cfg.debias else lp
      swapped = lp[1::2] if self.cfg.debias else None
      out = jax.device_get(soft_preference(jnp.asarray(first), None if swapped is None
                                           else jnp.asarray(swapped)))
      p[live], p_ab[live], p_ba[live], consistent[live] = out
    return Preference(p, p_ab, p_ba, consistent, skipped, self.truncated)

  def _orders(self, a: str, b: str, r_ab=None, r_ba=None):
    a, b = self._cut(a), self._cut(b)
    return [(a, b, r_ab), (b, a, r_ba)] if self.cfg.debias else [(a, b, r_ab)]

  def rationales(self, contexts: Sequence[str], responses_a: Sequence[str],
                 responses_b: Sequence[str], key: jax.Array, settings: SamplingConfig,
                 principles: Sequence[str | None] | None = None) -> list[tuple[str, str]]:
    """First step of chain-of-thought: the judge explains, for each order it will be asked in,
    which response is better. Returns (A-first rationale, B-first rationale) per pair."""
    if not hasattr(self, '_generator'):
      self._generator = text_lib.TextGenerator(self.model, self.tokenizer, self.mesh,
                                               self.cfg.prompt_buckets)
    principles = principles or [None] * len(contexts)
    requests, index = [], []
    for i, (c, a, b) in enumerate(zip(contexts, responses_a, responses_b)):
      for first, second, _ in self._orders(a, b):
        requests.append(pairwise_request(self.cfg, self._cut(c, context=True), first, second,
                                         principles[i]) + '\n\n' + RATIONALE_REQUEST)
        index.append(i)
    texts = self._generator(requests, settings, key, chat=self.cfg.chat_template)
    out = [['', ''] for _ in contexts]
    for j, (i, text) in enumerate(zip(index, texts)):
      out[i][j % 2 if self.cfg.debias else 0] = text.strip()
    return [tuple(r) for r in out]

  def pairwise_cot(self, contexts: Sequence[Any], responses_a: Sequence[Any],
                   responses_b: Sequence[Any], key: jax.Array,
                   settings: SamplingConfig = SamplingConfig(64, temperature=0.0),
                   samples: int = 1, principles: Sequence[str | None] | None = None
                   ) -> tuple[Preference, list[tuple[str, str]]]:
    """Two-step chain-of-thought labels; with samples > 1 (and temperature > 0), self-consistency:
    the soft labels of several sampled rationales are averaged. Returns (preference, the first
    sample's rationales); pairs that are not text are skipped (empty rationales)."""
    n = len(contexts)
    ok = [i for i in range(n) if all(isinstance(x, str) for x in (contexts[i], responses_a[i],
                                                                   responses_b[i]))]
    total, first_rationales = None, [('', '')] * n
    for s, k in enumerate(jax.random.split(key, samples)):
      rat = [('', '')] * n
      if ok:
        got = self.rationales([contexts[i] for i in ok], [responses_a[i] for i in ok],
                              [responses_b[i] for i in ok], k, settings,
                              None if principles is None else [principles[i] for i in ok])
        for i, r in zip(ok, got):
          rat[i] = r
      pref = self.pairwise(contexts, responses_a, responses_b, principles, rat)
      first_rationales = rat if s == 0 else first_rationales
      total = pref if total is None else total._replace(
          p_a_better=total.p_a_better + pref.p_a_better, p_ab=total.p_ab + pref.p_ab,
          p_ba=total.p_ba + pref.p_ba)
    total = total._replace(p_a_better=total.p_a_better / samples, p_ab=total.p_ab / samples,
                           p_ba=total.p_ba / samples)
    return total._replace(consistent=(total.p_ab > 0.5) == (total.p_ba > 0.5) if self.cfg.debias
                          else total.consistent), first_rationales

  def direct_reward(self, contexts: Sequence[Any], responses: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """d-RLAIF rewards in [-1, 1] for each (context, response); (rewards, skipped). Skipped rows
    (not text) get reward -1, the lowest score."""
    skipped = np.array([_text_or_none(c) is None or _text_or_none(r) is None
                        for c, r in zip(contexts, responses)], bool)
    rewards = np.full(len(contexts), -1.0, np.float32)
    live = [i for i in range(len(contexts)) if not skipped[i]]
    if live:
      reqs = [self.encode(direct_request(self.cfg, self._cut(contexts[i], context=True),
                                         self._cut(responses[i])), self.cfg.score_prefix)
              for i in live]
      lp = self.answer_log_probs(reqs, self.score_options)
      rewards[live] = np.asarray(expected_score_reward(jnp.asarray(lp)))
    return rewards, skipped

  def yes_no(self, contexts: Sequence[Any], responses: Sequence[Any], question: str
             ) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise scores log P(Yes) - log P(No) of `question` about each (context, response);
    (scores, skipped). Skipped rows (not text) score 0."""
    skipped = np.array([_text_or_none(c) is None or _text_or_none(r) is None
                        for c, r in zip(contexts, responses)], bool)
    scores = np.zeros(len(contexts), np.float32)
    live = [i for i in range(len(contexts)) if not skipped[i]]
    if live:
      options = [self.tokenizer.encode(t, add_special_tokens=False) for t in ('Yes', 'No')]
      reqs = [self.encode(question_request(self._cut(contexts[i], context=True),
                                           self._cut(responses[i]), question), '')
              for i in live]
      lp = self.answer_log_probs(reqs, options)  # an answer of several tokens: their sum
      scores[live] = lp[:, 0] - lp[:, 1]
    return scores, skipped
