"""What the judge reads: preambles per task, few-shot exemplars, the pairwise and direct request texts,
and the judge's settings (`JudgeConfig`).

Pairwise (RLAIF, Lee et al. 2023): a preamble, optional exemplars, the context and two responses, then
the answer prefix `Preferred response=`; the judge's answer is "1" or "2". Direct (d-RLAIF): the judge
rates one response from 1 to 10 after `Score=`. Question (pointwise): a yes/no question about one
response, scored log P(Yes) - log P(No). All are user turns of the judge's chat template unless
`chat_template` is off.
"""

from __future__ import annotations

import dataclasses

from rlaif_jax.infra.errors import UserError

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
  # prefill the requests' common beginning once per batch (fewer token slots; see Judge.shared_prefix)
  share_prefix: bool = True

  def __post_init__(self):
    if (self.task, self.preamble) not in PREAMBLES:
      raise UserError(f'No preamble for task={self.task!r}, preamble={self.preamble!r}; tasks are '
                      f'{TASKS}, preambles base | detailed.')


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


def question_request(context: str, response: str, question: str) -> str:
  """A yes/no question about one response (pointwise: no order to be biased by), e.g. "Is the
  response a bulleted list?"; the judge's answer is "Yes" or "No"."""
  return (f'Read the conversation and the response, then answer the question with Yes or No.\n\n'
          f'Context - {context.strip()}\nResponse - {response.strip() or "(empty)"}\n\n'
          f'Question - {question.strip()}')
