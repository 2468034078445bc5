"""RLAIF beside RLHF and hybrid labels on the same run: config.compare names label sources (judge,
human, hybrid); each runs config.stages in its own workdir/<source> (same seed, so the same prompts
and the same sampled pairs), and the comparison, the RLAIF literature's kind of table, goes to
workdir/compare.md and compare.json: the labels' agreement with config.check, the reward model's
held-out accuracy against it, the policy's checked effect with its 95% interval, the judge's win
rate and the human labels spent.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import ml_collections

from rlaif_jax.feedback.label_sources import SOURCES
from rlaif_jax.infra import storage
from rlaif_jax.infra.errors import UserError


REWARD_FUNCTION = 'reward_function'  # no labels: RL on config.check itself (the oracle control)


def source_config(config: ml_collections.ConfigDict, source: str) -> ml_collections.ConfigDict:
  """config for one label source: judge (no human labels), human (label.human for every pair) or
  hybrid (label.human for label.human_budget pairs); or reward_function: no label or reward_model
  stage, RL's reward the check itself (rl.reward='check:NAME')."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.compare = ()
  if source == REWARD_FUNCTION:
    c.stages = tuple(s for s in c.stages if s not in ('label', 'reward_model'))
    c.rl.reward, c.rl.rewards = f'check:{config.check}', ()
    return c
  c.label.source = source
  if source == 'judge':
    c.label.human, c.label.human_budget = '', 0
  elif source == 'human':
    c.label.human_budget = 0
  return c


def run(config: ml_collections.ConfigDict, workdir: storage.PathLike,
        run_stages: Callable[[ml_collections.ConfigDict, str], dict]) -> dict[str, Any]:
  """Each source of config.compare through `run_stages`, then the table; returns {source: row}."""
  bad = [s for s in config.compare if s not in (*SOURCES, REWARD_FUNCTION)]
  if bad or not config.compare:
    raise UserError(f'config.compare names label sources among {", ".join(SOURCES)} (or '
                    f'{REWARD_FUNCTION}: RL on the check itself); got {list(config.compare)}.')
  if not config.check or 'eval' not in config.stages or 'label' not in config.stages:
    raise UserError('config.compare needs config.check and stages that include label and eval '
                    '(the table compares labels and policies against the check).')
  rows = {}
  for source in config.compare:
    print(f'[compare] label source {source}: {storage.path(workdir) / source}', flush=True)
    rows[source] = row(run_stages(source_config(config, source), str(storage.path(workdir) / source)))
  storage.write_json(storage.path(workdir) / 'compare.json', rows)
  table = format_table(rows, config)
  storage.write_text(storage.path(workdir) / 'compare.md', table + '\n')
  if jax.process_index() == 0:
    print('\n' + table, flush=True)
  return rows


def row(summaries: dict[str, dict]) -> dict[str, Any]:
  """The comparison's numbers from one run's stage summaries."""
  label, rm, ev = summaries.get('label', {}), summaries.get('reward_model', {}), summaries['eval']
  return {'human_labels': label.get('human_labels'), 'pairs': label.get('pairs'),
          'label_check_agreement': label.get('check_agreement'),
          'label_check_agreement_ci95': label.get('check_agreement_ci95'),
          'rm_accuracy_check': rm.get('accuracy_check'), 'rm_pairs_check': rm.get('pairs_check'),
          'effect': ev['check']['effect'], 'effect_ci95': ev['check']['effect_ci95'],
          'check_policy': ev['check']['policy'], 'check_reference': ev['check']['reference'],
          'samples_per_prompt': ev['check'].get('samples_per_prompt', 1),
          'win_rate': ev.get('win_rate'), 'win_rate_ci95': ev.get('win_rate_ci95'),
          'reward_hacking': ev.get('reward_hacking', {}).get('flag')}


def format_table(rows: dict[str, dict], config: ml_collections.ConfigDict) -> str:
  human = config.label.human
  k = next(iter(rows.values()), {}).get('samples_per_prompt', 1)
  lines = [f'Label sources compared against the check {config.check} (human labels: '
           f'{"the check, standing in for annotators" if human == "check" else human}; checked '
           f'effect on {k} answer{"s" if k > 1 else ""} per held-out prompt)', '',
           '| label source | labels agree with the check | reward model vs the check (held out) | '
           'checked effect (95% CI) | judge win rate (95% CI) | human labels |',
           '|---|---|---|---|---|---|']
  for source, r in rows.items():
    if r['label_check_agreement'] is None:
      agree = '- (no labels: RL on the check)'
    else:
      lo, hi = r['label_check_agreement_ci95']
      agree = f'{r["label_check_agreement"]:.0%} (CI {lo:.0%}-{hi:.0%})'
    rm = ('-' if r['rm_accuracy_check'] is None
          else f'{r["rm_accuracy_check"]:.3f} ({r["rm_pairs_check"]} pairs)')
    win = ('-' if r['win_rate'] is None else
           f'{r["win_rate"]:.3f} (CI {r["win_rate_ci95"][0]:.3f}-{r["win_rate_ci95"][1]:.3f})')
    humans = '-' if r['pairs'] is None else f'{r["human_labels"]} of {r["pairs"]}'
    lines.append(f'| {source} | {agree} | {rm} | {r["effect"]:+.3f} (CI {r["effect_ci95"][0]:.3f}-'
                 f'{r["effect_ci95"][1]:.3f}){" (reward hacking)" if r.get("reward_hacking") else ""}'
                 f' | {win} | {humans} |')
  return '\n'.join(lines)
