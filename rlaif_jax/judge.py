"""The AI judge: labeling prompts, position-debiased soft preferences, direct (d-RLAIF) scores.

Pairwise (RLAIF, Lee et al. 2023): the judge reads a preamble, optional exemplars, the context and two
responses, then `Preferred response=`; P(A better) = softmax over its log-probs of the tokens "1" and
"2" there. With debiasing, both orders are scored in one batch and averaged (the second mirrored), so
swapping A and B gives exactly 1 - p; position consistency is how often both orders agree.

Direct scoring (d-RLAIF): the judge rates one response from 1 to 10; the reward is the expected score
under the judge's probabilities of the answers "1".."10" (each followed by the end of the turn, so "1"
and "10" are distinct even for tokenizers that split digits), rescaled to [-1, 1].

Everything runs as one jitted function per shape: the prompt batch is prefilled into a KV cache once
and the candidate answers are scored from it, so multi-token answers cost a few decode steps, not
another pass over the prompt.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlaif_jax import model as model_lib
from rlaif_jax import sampling
from rlaif_jax import sharding as shd

TASKS = ('summarization', 'helpful', 'harmless')

PREAMBLES = {
    ('summarization', 'base'):
        'A good summary is a shorter piece of text that has the essence of the original. Given a '
        'piece of text and two of its possible summaries, output 1 or 2 to indicate which summary is '
        'better.',
    ('summarization', 'detailed'):
        'A good summary is a shorter piece of text that has the essence of the original. It tries to '
        'accomplish the same purpose and conveys the key information from the original post. Rate a '
        'summary on coherence (clear, well structured), accuracy (no claims the text does not '
        'support), coverage (the important information is there) and overall quality. Given a piece '
        'of text and two of its possible summaries, output 1 or 2 to indicate which summary is better.',
    ('helpful', 'base'):
        'Given a conversation between a user and an AI assistant and two possible next responses from '
        'the assistant, output 1 or 2 to indicate which response is more helpful.',
    ('helpful', 'detailed'):
        'Given a conversation between a user and an AI assistant and two possible next responses from '
        'the assistant, judge which response is more helpful: it answers what was asked, is accurate, '
        'specific and complete, follows the instructions, and is clear and concise. Output 1 or 2 to '
        'indicate which response is more helpful.',
    ('harmless', 'base'):
        'Given a conversation between a user and an AI assistant and two possible next responses from '
        'the assistant, output 1 or 2 to indicate which response is more harmless.',
    ('harmless', 'detailed'):
        'Given a conversation between a user and an AI assistant and two possible next responses from '
        'the assistant, judge which response is more harmless: it does not help with anything '
        'dangerous, illegal, unethical or hurtful, declines such requests politely, avoids toxic, '
        'biased or offensive language, and does not give dangerous advice. Output 1 or 2 to indicate '
        'which response is more harmless.',
}

RATIONALE_REQUEST = ('Explain in a few sentences which response is better and why. Do not answer '
                     'with only a number.')

DIRECT_PREAMBLES = {
    'summarization': 'Rate how good the summary of the text below is, from 1 (worst) to 10 (best).',
    'helpful': 'Rate how helpful the assistant\'s last response is, from 1 (worst) to 10 (best).',
    'harmless': 'Rate how harmless the assistant\'s last response is, from 1 (most harmful) to 10 '
                '(completely harmless).',
}


@dataclasses.dataclass(frozen=True)
class Exemplar:
  """A few-shot example: a context, two responses and which one (1 or 2) is preferred."""
  context: str
  response_1: str
  response_2: str
  preferred: int
  rationale: str = ''


@dataclasses.dataclass(frozen=True)
class JudgeConfig:
  task: str = 'harmless'  # summarization | helpful | harmless
  preamble: str = 'base'  # base | detailed
  exemplars: tuple[Exemplar, ...] = ()
  answer_prefix: str = 'Preferred response='
  score_prefix: str = 'Score='
  chat_template: bool = True  # wrap the request as a user turn of the judge's chat template
  debias: bool = True  # score both orders and average
  max_response_tokens: int = 256  # longer responses are cut at the end (counted in `truncated`)
  max_context_tokens: int = 512  # longer contexts keep their last tokens (counted in `truncated`)
  # prompts are left-padded to the next bucket; finer buckets waste less padding, compile more often
  prompt_buckets: tuple[int, ...] = tuple(range(64, 1025, 64)) + (1536, 2048)

  def __post_init__(self):
    if (self.task, self.preamble) not in PREAMBLES:
      raise ValueError(f'No preamble for task={self.task!r}, preamble={self.preamble!r}; tasks are '
                       f'{TASKS}, preambles base | detailed.')


class Preference(NamedTuple):
  p_a_better: np.ndarray  # [N] debiased (or raw, when debias is off) P(response A is better)
  p_ab: np.ndarray  # [N] P("1") with A shown first
  p_ba: np.ndarray  # [N] P(A better) from the swapped order (NaN when debias is off)
  consistent: np.ndarray  # [N] bool: both orders prefer the same response
  skipped: np.ndarray  # [N] bool: not text; p_a_better is 0.5 and the row is counted as skipped
  truncated: int  # responses cut to max_response_tokens


def _text_or_none(x: Any) -> str | None:
  return x if isinstance(x, str) else None


def pairwise_request(cfg: JudgeConfig, context: str, first: str, second: str,
                     principle: str | None = None, rationale: str | None = None) -> str:
  """The judge's request text (before the chat template and the answer prefix)."""
  parts = [PREAMBLES[(cfg.task, cfg.preamble)]]
  if principle:
    parts.append(f'Judge by this principle: {principle}')
  for ex in cfg.exemplars:
    parts.append(_pair_block(cfg.task, ex.context, ex.response_1, ex.response_2) +
                 (f'\nRationale: {ex.rationale}' if ex.rationale else '') +
                 f'\n{cfg.answer_prefix}{ex.preferred}')
  parts.append(_pair_block(cfg.task, context, first, second))
  if rationale:
    parts.append(f'Rationale: {rationale}')
  return '\n\n'.join(parts)


def _pair_block(task: str, context: str, first: str, second: str) -> str:
  what = 'Summary' if task == 'summarization' else 'Response'
  head = 'Text' if task == 'summarization' else 'Context'
  return (f'{head} - {context.strip()}\n{what} 1 - {first.strip() or "(empty)"}\n'
          f'{what} 2 - {second.strip() or "(empty)"}')


def direct_request(cfg: JudgeConfig, context: str, response: str) -> str:
  what = 'Summary' if cfg.task == 'summarization' else 'Response'
  head = 'Text' if cfg.task == 'summarization' else 'Context'
  return (f'{DIRECT_PREAMBLES[cfg.task]}\n\n{head} - {context.strip()}\n'
          f'{what} - {response.strip() or "(empty)"}')


def soft_preference(logp_first: jax.Array, logp_swapped: jax.Array | None) -> tuple:
  """Choice log-probs [N, 2] of ("1", "2") for (A, B) and, when debiasing, for (B, A).

  Returns (p_a_better, p_ab, p_ba, consistent). Swapping A and B gives exactly 1 - p_a_better.
  """
  p_ab = jax.nn.softmax(logp_first, axis=-1)[:, 0]
  if logp_swapped is None:
    return p_ab, p_ab, jnp.full_like(p_ab, jnp.nan), jnp.ones(p_ab.shape, bool)
  p_ba = jax.nn.softmax(logp_swapped, axis=-1)[:, 1]  # A is shown second there
  consistent = (p_ab > 0.5) == (p_ba > 0.5)
  return (p_ab + p_ba) / 2, p_ab, p_ba, consistent


def expected_score_reward(logp_options: jax.Array, scores: Sequence[float] = tuple(range(1, 11))
                          ) -> jax.Array:
  """d-RLAIF reward: E[score] under softmax over the options' log-probs [N, K], rescaled to [-1, 1]."""
  s = jnp.asarray(scores, jnp.float32)
  expected = jnp.sum(jax.nn.softmax(logp_options, axis=-1) * s, axis=-1)
  return 2 * (expected - s.min()) / (s.max() - s.min()) - 1


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
  state_sh, batch, repl = sampling.model_shardings(model, mesh)

  def fn(state, prompt, valid, options, options_valid):
    return option_log_probs(nnx.merge(graphdef, state), prompt, valid, options, options_valid)

  shardings = (state_sh, batch, batch, repl, repl)
  return shd.on_mesh(jax.jit(fn, in_shardings=shardings, out_shardings=batch), mesh, shardings)


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
    self._scorer = jit_option_log_probs(model, mesh)
    self.truncated = 0

  def _single_tokens(self, texts: Sequence[str]) -> list[int]:
    ids = [self.tokenizer.encode(t, add_special_tokens=False) for t in texts]
    bad = [t for t, i in zip(texts, ids) if len(i) != 1]
    if bad:
      raise ValueError(f'The judge tokenizer splits answer tokens {bad} into several tokens.')
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

  def option_log_probs(self, requests: Sequence[list[int]], options: Sequence[list[int]]) -> np.ndarray:
    """[N, O] log-probs of each option after each encoded request (batched, bucketed, jitted)."""
    length = sampling.bucket_length(max(len(r) for r in requests), self.cfg.prompt_buckets)
    tokens, valid = sampling.left_pad(shd.fill_batch(list(requests), self.batch_multiple), length,
                                      self.pad_id)
    width = max(len(o) for o in options)
    opt = np.full((len(options), width), self.pad_id, np.int32)
    opt_valid = np.zeros((len(options), width), bool)
    for i, o in enumerate(options):
      opt[i, :len(o)], opt_valid[i, :len(o)] = o, True
    out = self._scorer(self.state, tokens, valid, opt, opt_valid)
    return np.asarray(jax.device_get(out))[:len(requests)]

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
      lp = self.option_log_probs(reqs, [[t] for t in self.choice_ids])
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
                 responses_b: Sequence[str], key: jax.Array, settings: sampling.SamplingConfig,
                 principles: Sequence[str | None] | None = None) -> list[tuple[str, str]]:
    """First step of chain-of-thought: the judge explains, for each order it will be asked in,
    which response is better. Returns (A-first rationale, B-first rationale) per pair."""
    if not hasattr(self, '_generator'):
      self._generator = sampling.TextGenerator(self.model, self.tokenizer, self.mesh,
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
                   settings: sampling.SamplingConfig = sampling.SamplingConfig(64, temperature=0.0),
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
      lp = self.option_log_probs(reqs, self.score_options)
      rewards[live] = np.asarray(expected_score_reward(jnp.asarray(lp)))
    return rewards, skipped


# --------------------------------------------------------------------------- labeler alignment

class HumanPair(NamedTuple):
  context: str
  chosen: str
  rejected: str


def split_dialogue(dialogue: str, marker: str = '\n\nAssistant:') -> tuple[str, str]:
  """HH-RLHF style '...Human: ... Assistant: <response>' -> (context, final response)."""
  i = dialogue.rfind(marker)
  if i < 0:
    raise ValueError(f'No {marker.strip()!r} turn in the dialogue: {dialogue[:80]!r}...')
  return dialogue[:i].strip(), dialogue[i + len(marker):].strip()


def read_human_pairs(path: str, limit: int | None = None) -> list[HumanPair]:
  """Human-labeled pairs from JSONL (optionally .gz): rows with `prompt`, `chosen`, `rejected`, or
  HH-RLHF rows whose `chosen` / `rejected` are whole dialogues ending in the two responses."""
  import gzip
  import json
  opener = gzip.open if path.endswith('.gz') else open
  pairs = []
  with opener(path, 'rt', encoding='utf-8') as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
        if 'prompt' in row:
          pairs.append(HumanPair(row['prompt'], row['chosen'], row['rejected']))
        else:
          ctx, chosen = split_dialogue(row['chosen'])
          _, rejected = split_dialogue(row['rejected'])
          pairs.append(HumanPair(ctx, chosen, rejected))
      except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f'{path}:{n}: malformed preference row ({e}); each line needs "chosen" and '
                         f'"rejected" (and "prompt", unless they are whole HH-RLHF dialogues).') from None
      if limit and len(pairs) >= limit:
        break
  if not pairs:
    raise ValueError(f'{path} has no preference rows.')
  return pairs


def alignment(judge: Judge, pairs: Sequence[HumanPair], batch_size: int = 8,
              progress: bool = True) -> dict[str, float]:
  """Agreement of the AI preference with the human one, and position consistency, over pairs.

  The human-chosen response is shown as A in the first order (B in the swapped one), so with
  debiasing a judge that always answers "1" scores exactly 50%.
  """
  from tqdm import tqdm
  agree, consistent, skipped, p_sum, first_pos = 0, 0, 0, 0.0, 0
  bar = tqdm(total=len(pairs), desc=f'alignment {judge.cfg.task}/{judge.cfg.preamble}',
             disable=not progress, unit='pair')
  for i in range(0, len(pairs), batch_size):
    chunk = pairs[i:i + batch_size]
    pref = judge.pairwise([p.context for p in chunk], [p.chosen for p in chunk],
                          [p.rejected for p in chunk])
    live = ~pref.skipped
    agree += int((pref.p_a_better[live] > 0.5).sum())
    consistent += int(pref.consistent[live].sum())
    first_pos += int((pref.p_ab[live] > 0.5).sum())
    skipped += int(pref.skipped.sum())
    p_sum += float(pref.p_a_better[live].sum())
    bar.update(len(chunk))
  bar.close()
  n = len(pairs) - skipped
  return {'pairs': n, 'skipped': skipped, 'agreement': agree / max(n, 1),
          'position_consistency': consistent / max(n, 1), 'mean_p_chosen': p_sum / max(n, 1),
          'first_order_says_1': first_pos / max(n, 1)}


# --------------------------------------------------------------------------- constitutions

def read_constitution(path: str) -> list[str]:
  """Principles from a text file: one per line; blank lines and `#` comments are skipped."""
  with open(path, encoding='utf-8') as f:
    principles = [line.strip() for line in f if line.strip() and not line.lstrip().startswith('#')]
  if not principles:
    raise ValueError(f'Constitution {path} has no principles (one per line).')
  return principles


def sample_principles(principles: Sequence[str], n: int, seed: int) -> list[str]:
  """One principle per comparison, drawn with a seeded generator (record it with the label)."""
  rng = np.random.default_rng(seed)
  return [principles[i] for i in rng.integers(0, len(principles), n)]


CRITIQUE_REQUEST = ('Here is a conversation and the assistant\'s last response.\n\n{context}\n\n'
                    'Response: {response}\n\nCritique the response according to this principle: '
                    '{principle}\nName its specific problems in a few sentences.')
REVISION_REQUEST = ('Here is a conversation and the assistant\'s last response.\n\n{context}\n\n'
                    'Response: {response}\n\nCritique: {critique}\n\nRewrite the response so that '
                    'it fixes the problems in the critique and follows this principle: {principle}\n'
                    'Answer with the rewritten response only.')


def critique_and_revise(generator: sampling.TextGenerator, prompts: Sequence[str],
                        responses: Sequence[str], principles: Sequence[str], key: jax.Array,
                        settings: sampling.SamplingConfig, rounds: int = 1) -> list[dict]:
  """Supervised Constitutional AI: critique each response against its principle, revise it, and
  repeat for `rounds`. Returns one record per prompt with every critique and revision; the final
  revision is the fine-tuning target (`revision`). An empty revision keeps the previous text."""
  if rounds < 1:
    raise ValueError(f'rounds must be >= 1, got {rounds}.')
  current = list(responses)
  history = [{'prompt': p, 'response': r, 'principle': c, 'critiques': [], 'revisions': []}
             for p, r, c in zip(prompts, responses, principles)]
  for k in jax.random.split(key, rounds):
    k_crit, k_rev = jax.random.split(k)
    critiques = generator([CRITIQUE_REQUEST.format(context=p, response=r, principle=c)
                           for p, r, c in zip(prompts, current, principles)], settings, k_crit)
    revisions = generator([REVISION_REQUEST.format(context=p, response=r, critique=q, principle=c)
                           for p, r, q, c in zip(prompts, current, critiques, principles)],
                          settings, k_rev)
    for h, q, r in zip(history, critiques, revisions):
      h['critiques'].append(q.strip())
      h['revisions'].append(r.strip())
    current = [r.strip() or old for r, old in zip(revisions, current)]
  for h, r in zip(history, current):
    h['revision'] = r
  return history


def write_revisions(records: Sequence[dict], path: str) -> None:
  """(prompt, revision) pairs as JSONL for the fine-tuning stage (with the full trail)."""
  import json
  import os
  tmp = path + '.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    for r in records:
      f.write(json.dumps(r) + '\n')
  os.replace(tmp, path)
