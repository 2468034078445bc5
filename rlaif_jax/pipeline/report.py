"""The evaluation report: win rate with a bootstrap confidence interval, plots of training metrics
(PNG, matplotlib without a display) and a markdown summary in `<workdir>/eval/`."""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from rlaif_jax.feedback import validation
from rlaif_jax.infra import metrics, storage


def win_rate(p_policy_better: np.ndarray, consistent: np.ndarray, resamples: int = 2000,
             seed: int = 0) -> dict[str, Any]:
  """Per prompt: 1 if the judge prefers the policy (p > 0.5, averaged over both orders), 0.5 on an
  exact tie, 0 otherwise. The win rate is their mean, with a seeded percentile-bootstrap 95%
  interval (`scipy.stats.bootstrap`)."""
  p = np.asarray(p_policy_better, np.float64)
  score = np.where(p > 0.5, 1.0, np.where(p < 0.5, 0.0, 0.5))
  low, high = validation.bootstrap_mean(score, resamples, seed)
  return {'win_rate': float(score.mean()), 'win_rate_ci95': [low, high],
          'wins': int((p > 0.5).sum()), 'ties': int((p == 0.5).sum()), 'losses': int((p < 0.5).sum()),
          'mean_p_policy_better': float(p.mean()),
          'judge_position_consistency': float(np.mean(consistent))}


def plot(rows: list[dict], keys: tuple[str, ...], title: str, path: storage.epath.Path
         ) -> storage.epath.Path | None:
  """One panel per metric against the step, as a PNG at `path` (collective); None when there is
  nothing to plot."""
  keys = tuple(k for k in keys if any(isinstance(r.get(k), float) for r in rows))
  if not keys:
    return None
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3), squeeze=False)
  for ax, k in zip(axes[0], keys):
    pts = [(r['step'], r[k]) for r in rows if isinstance(r.get(k), float)]
    ax.plot(*zip(*pts), marker='.')
    ax.set_title(k)
    ax.set_xlabel('step')
    ax.grid(alpha=0.3)
  fig.suptitle(title)
  return _save(fig, path)


def reward_hacking(rows: list[dict], check: str) -> dict[str, Any] | None:
  """Did the RL reward rise while the principle's check (monitored per iteration as
  reward/check:NAME) did not? Compares the means of the first and last fifth of the iterations (at
  least 2 each): a rise counts when it exceeds twice its standard error. None without the check's
  curve or with fewer than 4 iterations."""
  key = f'reward/check:{check}'
  rows = [r for r in rows if isinstance(r.get('reward'), float) and isinstance(r.get(key), float)]
  if len(rows) < 4:
    return None
  k = max(2, len(rows) // 5)

  def rise(name):
    a, b = (np.array([r[name] for r in part]) for part in (rows[:k], rows[-k:]))
    se = float(np.sqrt(a.var(ddof=1) / k + b.var(ddof=1) / k))
    return float(a.mean()), float(b.mean()), bool(b.mean() - a.mean() > 2 * se)

  r0, r1, reward_rose = rise('reward')
  c0, c1, check_rose = rise(key)
  out = {'check': check, 'iterations': len(rows), 'window': k, 'reward_first': r0, 'reward_last': r1,
         'check_first': c0, 'check_last': c1, 'reward_rose': reward_rose, 'check_rose': check_rose,
         'flag': reward_rose and not check_rose}
  window = f'means of the first and last {k} of {len(rows)} iterations'
  if out['flag']:
    out['text'] = (f'Reward hacking: the RL reward rose {r0:.3f} -> {r1:.3f} while the check '
                   f'{check} did not ({c0:.3f} -> {c1:.3f}; {window}): the policy learned what the '
                   f'reward pays for, not the principle.')
  else:
    out['text'] = (f'RL reward {r0:.3f} -> {r1:.3f} ({"rose" if reward_rose else "no clear rise"}), '
                   f'check {check} {c0:.3f} -> {c1:.3f} ({"rose" if check_rose else "no clear rise"}; '
                   f'{window}).')
  return out


def write(workdir: storage.PathLike, results: dict[str, Any], samples: list[dict] = (),
          check: str = '') -> storage.epath.Path:
  """eval/report.md with the results (the checked effect first, when there is a check, and the
  reward-hacking verdict), the RL and reward-model curves (the RL reward beside the check per
  iteration), a win-rate chart and `samples` (prompt, policy, reference) side by side."""
  out = storage.path(workdir) / 'eval'
  rl_rows = metrics.read(workdir, 'rl')
  terms = tuple(sorted({k for r in rl_rows for k in r if k.startswith('reward/')}))
  figures = [
      plot(rl_rows, ('reward', 'kl', 'entropy'), 'RL: reward (normalised), '
           'KL to the reference, entropy', out / 'rl_reward_kl.png'),
      plot(rl_rows, ('reward', *terms), 'RL per iteration: the reward optimised and each term '
           '(the check: a monitor, weight 0, unless it is a term)', out / 'rl_reward_check.png')
      if terms else None,
      plot(metrics.read(workdir, 'reward_model'), ('loss', 'accuracy'), 'Reward model training',
           out / 'reward_model.png'),
      _win_chart(results, out / 'win_rate.png') if 'win_rate' in results else None,
  ]
  lines = ['# Evaluation', '', f'Held-out prompts: {results["prompts"]}; policy from '
           f'`{results["policy_from"]}`, reference from `{results["reference_from"]}`.', '',
           '| metric | value |', '|---|---|']
  if 'check' in results:
    lines.append(f'| **{checked(results["check"])}** | check of the principle, not the judge |')
  if 'check_greedy' in results:
    lines.append(f'| {checked(results["check_greedy"])} | the same check on greedy answers |')
  if results.get('reward_hacking'):
    lines.append(f'| {"**" if results["reward_hacking"]["flag"] else ""}'
                 f'{results["reward_hacking"]["text"]}{"**" if results["reward_hacking"]["flag"] else ""}'
                 f' | RL reward vs the monitored check |')
  if 'win_rate' in results:
    lo, hi = results['win_rate_ci95']
    lines.append(f'| win rate vs reference (judge, both orders) | {results["win_rate"]:.3f} '
                 f'(95% CI {lo:.3f}-{hi:.3f}) |')
    lines.append(f'| wins / ties / losses | {results["wins"]} / {results["ties"]} / '
                 f'{results["losses"]} |')
    lines.append(f'| judge position consistency | {results["judge_position_consistency"]:.3f} |')
  for k in ('harmless_rate_policy', 'harmless_rate_reference'):
    if k in results:
      lines.append(f'| {k.replace("_", " ")} | {results[k]:.3f} |')
  if 'judge_human_alignment' in results:
    a = results['judge_human_alignment']
    lines.append(f'| judge-human agreement | {a["agreement"]:.3f} on {a["pairs"]} pairs |')
  if rl_rows:
    k = max(1, len(rl_rows) // 5)
    kl = sum(r['kl'] for r in rl_rows[-k:]) / k
    lines.append(f'| KL to the reference (RL rollouts, mean of the last {k} iterations) | {kl:.3f} |')
  lines.append('')
  lines += [f'![{f.name}]({f.name})' for f in figures if f]
  if samples:
    lines += ['', f'## Held-out samples ({len(samples)} of {results["prompts"]})', '',
              '| prompt | policy | reference |', '|---|---|---|']
    cell = lambda t: ' '.join(str(t).split()).replace('|', '\\|')
    lines += [f'| {cell(s["prompt"])} | {cell(s["policy"])} | {cell(s["reference"])} |' for s in samples]
  path = out / 'report.md'
  storage.write_text(path, '\n'.join(lines) + '\n')
  return path


def _win_chart(results: dict[str, Any], path: storage.epath.Path) -> storage.epath.Path:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(4, 3))
  lo, hi = results['win_rate_ci95']
  w = results['win_rate']
  ax.bar(['policy vs reference'], [w], yerr=[[w - lo], [hi - w]], capsize=8)
  ax.axhline(0.5, color='grey', linestyle='--', linewidth=1)
  ax.set_ylim(0, 1)
  ax.set_ylabel('win rate (95% CI)')
  return _save(fig, path)


def _save(fig, path: storage.epath.Path) -> storage.epath.Path:
  import matplotlib.pyplot as plt
  fig.tight_layout()
  png = io.BytesIO()
  fig.savefig(png, dpi=100, format='png')
  plt.close(fig)
  storage.write_bytes(path, png.getvalue())
  return path


def checked(e: dict) -> str:
  """The checked effect in one phrase: check, effect and its 95% interval, both sides' means, and
  how many answers per prompt it averaged."""
  lo, hi = e['effect_ci95']
  k = e.get('samples_per_prompt', 1)
  answers = (f' x {k} sampled answers (T={e["temperature"]:g})' if k > 1 else
             ' (greedy)' if e.get('temperature') == 0 else '')
  return (f'check {e["name"]}: effect {e["effect"]:+.3f} (CI {lo:.3f}-{hi:.3f}), policy '
          f'{e["policy"]:.3f} vs reference {e["reference"]:.3f} on {e["prompts"]} held-out '
          f'prompts{answers}')


def summary_table(workdir: storage.PathLike, summaries: dict[str, dict], seconds: dict[str, float]) -> str:
  """The run at a glance: one row per stage with its headline numbers and wall time."""
  rows = []
  if 'check' in summaries.get('eval', {}):  # the headline: the effect measured without the judge
    rows.append(('checked', checked(summaries['eval']['check']), ''))
  for stage, info in summaries.items():
    rows.append((stage, _headline(workdir, stage, info), f'{seconds.get(stage, 0.0):.0f} s'))
  width = max(len(r[1]) for r in rows) if rows else 10
  lines = [f'{"stage":<13}{"result":<{width + 2}}wall time', '-' * (width + 26)]
  lines += [f'{s:<13}{h:<{width + 2}}{t}'.rstrip() for s, h, t in rows]
  lines.append(f'{"total":<13}{"":<{width + 2}}{sum(seconds.values()):.0f} s')
  report = storage.path(workdir) / 'eval' / 'report.md'
  if report.exists():
    lines.append(f'report and plots (reward and KL: rl_reward_kl.png): {report.parent}')
  return '\n'.join(lines)


def _headline(workdir: str, stage: str, info: dict) -> str:
  if stage == 'label':
    parts = [f'{info["pairs"]} pairs labeled']
    if info.get('position_consistency') is not None:
      parts.append(f'judge position consistency {info["position_consistency"]:.2f}')
    if info.get('mean_confidence') is not None:
      parts.append(f'mean confidence {info["mean_confidence"]:.2f}')
    if info.get('check_agreement') is not None:
      parts.append(f'labels agree with the check on {info["check_agreement"]:.0%} of '
                   f'{info["check_pairs"]} pairs')
    if info.get('human_labels'):
      parts.append(f'{info["human_labels"]} human labels ({info["human_source"]})')
    return ', '.join(parts)
  if stage == 'reward_model':
    vs_check = (f', vs the check {info["accuracy_check"]:.3f} ({info["pairs_check"]} pairs)'
                if 'accuracy_check' in info else '')
    return (f'held-out accuracy vs its labels {info["accuracy_ai"]:.3f} ({info["pairs_ai"]} pairs)'
            f'{vs_check}, {info["steps"]} steps')
  if stage == 'rl':
    rows = metrics.read(workdir, 'rl')
    if rows:  # means over the first and last fifth of training (single iterations are noisy)
      k = max(1, len(rows) // 5)
      mean = lambda part, key: sum(r[key] for r in part) / len(part)
      first, last = rows[:k], rows[-k:]
      watched = [key for key in rows[-1] if key.startswith('reward/check:')
                 and all(key in r for r in first + last)]
      checks = ''.join(f', {key[len("reward/"):]} {mean(first, key):.3f} -> {mean(last, key):.3f}'
                       for key in watched)
      return (f'reward {mean(first, "reward"):.3f} -> {mean(last, "reward"):.3f}{checks}, KL '
              f'{mean(first, "kl"):.3f} -> {mean(last, "kl"):.3f} (means of the first and last '
              f'{k} of {len(rows)} iterations)')
    return f'{info.get("iterations", 0)} iterations'
  if stage == 'eval':
    parts = []
    if 'win_rate' in info:
      lo, hi = info['win_rate_ci95']
      parts.append(f'win rate vs reference {info["win_rate"]:.3f} (95% CI {lo:.3f}-{hi:.3f})')
    if info.get('reward_hacking', {}).get('flag'):
      parts.append('REWARD HACKING: the RL reward rose, the check did not')
    return ', '.join(parts + [f'{info["prompts"]} held-out prompts'])
  if stage == 'sft':
    return f'{info["examples"]} examples, {info["steps"]} steps'
  if stage == 'export':
    return f'Hugging Face folder {info["folder"]}'
  if stage == 'generate':
    return f'{info["responses"]} responses'
  if stage == 'validate':
    parts = [f'{mode} {info[mode]["agreement"]:.0%} (CI {info[mode]["agreement_ci95"][0]:.0%}-'
             f'{info[mode]["agreement_ci95"][1]:.0%})' for mode in ('pairwise', 'pointwise') if mode in info]
    pairs = info['pairwise']['pairs']
    return f'judge agrees with check {info["check"]}: {", ".join(parts)} on {pairs} pairs'
  if stage == 'dpo':
    return (f'held-out preference accuracy {info["eval_accuracy"]:.3f}, {info["steps"]} steps'
            if 'eval_accuracy' in info else f'{info.get("steps", 0)} steps')
  return ''
