"""Programmatic ground truth for a principle: small pure functions of (prompt, response) -> score,
higher meaning more of the property. They measure a judge (`feedback/validation.py`: does the judge
prefer the response the check prefers?) and a policy's checked effect, without trusting the judge.

Built in (`CHECKS`): `bulleted_list` (share of the response's lines that are list items),
`ends_with_question` (1 if the last sentence asks the user something), `french` (share of words that
are common French words minus that of common English ones), `brevity` (minus the word count: a
shorter answer scores higher), `polite` (courtesy phrases per sentence), `exclamations` (exclamation
marks: the demo's enthusiasm principle). A config names one of
them or its own function as 'package.module:function' (`resolve`).
"""

from __future__ import annotations

import importlib
import re
from typing import Callable

from rlaif_jax.infra.errors import UserError

Check = Callable[[str, str], float]

_ITEM = re.compile(r'^\s*(?:[-*\u2022]|\d+[.)])\s+\S')
_WORD = re.compile(r"[a-zàâçéèêëîïôûùüÿœ']+", re.IGNORECASE)
FRENCH = frozenset('le la les un une des du de et est sont pas je tu il elle nous vous ils elles '
                   'que qui dans pour avec sur mais ou donc car ce cette ces mon ma mes ton ta '
                   'votre vos leur très bien aussi être avoir fait peut bonjour merci oui non au '
                   'aux en ne plus comme tout'.split())
ENGLISH = frozenset('the a an and is are not i you he she we they that which in for with on but or '
                    'so this these my your their very well also be have do can hello thanks yes no '
                    'to of it as all more'.split())
POLITE = ('please', 'thank', 'thanks', 'you are welcome', "you're welcome", 'happy to help',
          'glad to help', 'i hope this helps', 'kindly', 'sorry', 'appreciate')


def bulleted_list(prompt: str, response: str) -> float:
  lines = [line for line in response.splitlines() if line.strip()]
  return sum(bool(_ITEM.match(line)) for line in lines) / len(lines) if lines else 0.0


def ends_with_question(prompt: str, response: str) -> float:
  return float(response.rstrip().rstrip('"\')]').endswith('?'))


def french(prompt: str, response: str) -> float:
  words = [w.lower() for w in _WORD.findall(response)]
  if not words:
    return 0.0
  return (sum(w in FRENCH for w in words) - sum(w in ENGLISH for w in words)) / len(words)


def brevity(prompt: str, response: str) -> float:
  return -float(len(response.split()))


def polite(prompt: str, response: str) -> float:
  text = response.lower()
  sentences = max(len(re.findall(r'[.!?]+', text)), 1)
  return sum(text.count(phrase) for phrase in POLITE) / sentences


def exclamations(prompt: str, response: str) -> float:
  return float(response.count('!'))


CHECKS: dict[str, Check] = {f.__name__: f for f in (bulleted_list, ends_with_question, french,
                                                     brevity, polite, exclamations)}


def resolve_name(name: str) -> None:
  """A UserError unless `name` is a built-in check or has the form 'package.module:function'
  (nothing is imported: found from the config alone)."""
  if name in CHECKS:
    return
  module, sep, attr = name.partition(':')
  if not (sep and attr.isidentifier() and all(p.isidentifier() for p in module.split('.'))):
    raise UserError(f'Unknown check {name!r}; use one of {sorted(CHECKS)} or a function of yours '
                    f"as 'package.module:function' taking (prompt, response).")


def resolve(name: str) -> Check:
  """A built-in check by name, or a user's 'package.module:function' taking (prompt, response)."""
  resolve_name(name)
  if name in CHECKS:
    return CHECKS[name]
  return import_function(name, 'Check')


def import_function(name: str, what: str) -> Callable:
  """The function a 'package.module:function' name gives; a UserError naming `what` when it does not
  import or is not callable."""
  module, _, attr = name.partition(':')
  try:
    fn = getattr(importlib.import_module(module), attr)
  except (ImportError, AttributeError) as e:
    raise UserError(f'{what} {name!r} cannot be imported ({e}); give an importable '
                    f"'package.module:function'.") from e
  if not callable(fn):
    raise UserError(f'{what} {name!r} is not a function of (prompt, response).')
  return fn


def preferred(check: Check, prompt: str, a: str, b: str) -> float:
  """1.0 when the check scores A higher, 0.0 when B, 0.5 on a tie."""
  sa, sb = check(prompt, a), check(prompt, b)
  return 1.0 if sa > sb else 0.0 if sa < sb else 0.5
