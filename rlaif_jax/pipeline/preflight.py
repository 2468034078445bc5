"""The checks of a config that need no jax, run by the entry point before anything heavy imports (a
misspelt reward fails in a fraction of a second), and the reward functions that RL's reward terms
and monitors name, resolved to Python functions."""

from __future__ import annotations

import ml_collections

from rlaif_jax.feedback import checks
from rlaif_jax.rl.config import RLConfig, reward_kind


def reward_functions(config: ml_collections.ConfigDict) -> dict[str, checks.Check]:
  """{name: (prompt, response) -> float} for every check and function term of rl.reward / rl.rewards
  and for the monitored 'check:<config.check>'; a one-line UserError for an unknown check or a
  function that does not import."""
  names = [name for name, _ in RLConfig.from_config(config.rl).reward_terms]
  if config.check:
    names.append(f'check:{config.check}')
  return resolve(names)


def resolve(names) -> dict[str, checks.Check]:
  """{name: function} for the check and function terms among `names` (others are left out)."""
  out = {}
  for name in names:
    kind = reward_kind(name)
    if kind == 'check':
      out[name] = checks.resolve(name[len('check:'):])
    elif kind == 'function':
      out[name] = checks.import_function(name, 'Reward function')
  return out


def check(config: ml_collections.ConfigDict) -> None:
  """What needs no jax: the RL settings (algorithm, reward names and weights, batch splits aside)
  and the functions its reward terms name."""
  if 'rl' in config.stages:
    reward_functions(config)
