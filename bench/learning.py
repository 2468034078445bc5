"""Does RL move the policy? The oracle control: GRPO on SmolLM2-135M-Instruct with the principle's
check itself as the reward (`configs/smollm2_demo.py:oracle`: rl.reward='check:exclamations', the
demo's prompts), then the check on 8 sampled answers per held-out prompt (temperature 1, as RL
samples) for the trained policy and the starting one, with a bootstrap 95% interval over the 48
held-out prompts, and the minutes taken. A benchmark of learning, not a timed test.

The same bench measures any other reward on the same footing (an AI-feedback reward such as the
judge's yes/no score): extra arguments go to rlaif_jax.main, e.g.

  .venv/bin/python -m bench.learning                                  # the oracle control
  .venv/bin/python -m bench.learning --config.rl.reward=judge_yes_no \\
      "--config.rl.question=Does the response use exclamation marks?"
  .venv/bin/python -m bench.learning --workdir=/tmp/learning --config.rl.iterations=12

A finished workdir is reported again without rerunning (the stages skip themselves).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from bench import machine

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CONFIG = 'configs/smollm2_demo.py:oracle'


def main():
  ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  ap.add_argument('--workdir', default='', help='where the run goes (default: a new temporary folder)')
  args, extra = ap.parse_known_args()
  workdir = args.workdir or tempfile.mkdtemp(prefix='bench_learning_')
  env = dict(os.environ, JAX_PLATFORMS=os.environ.get('JAX_PLATFORMS', 'cpu'))
  t0 = time.time()
  cmd = [sys.executable, '-m', 'rlaif_jax.main', f'--config={CONFIG}', f'--workdir={workdir}', *extra]
  print(' '.join(cmd), flush=True)
  subprocess.run(cmd, cwd=ROOT, env=env, check=True)
  report(workdir, time.time() - t0, extra)


def report(workdir: str, seconds: float, extra: list[str]) -> None:
  with open(os.path.join(workdir, 'summary.json')) as f:
    summary = json.load(f)
  ev, stage_seconds = summary['stages']['eval'], summary['seconds']
  rows = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))
          if json.loads(line).get('stage') == 'rl']
  print(f'\nLearning: {CONFIG} {" ".join(extra)}; {machine.describe()}; workdir {workdir}')
  print(f'{"answers per prompt":<34}{"reference":>11}{"policy":>9}{"effect":>9}{"95% CI":>18}'
        f'{"policy > ref":>14}{"answers with it":>18}')
  for key in ('check', 'check_greedy'):
    if key not in ev:
      continue
    e = ev[key]
    what = (f'{e["samples_per_prompt"]} sampled (T={e["temperature"]:g})' if e['samples_per_prompt'] > 1
            else 'greedy' if e.get('temperature') == 0 else '1 sampled')
    lo, hi = e['effect_ci95']
    print(f'{e["name"] + ", " + what:<34}{e["reference"]:>11.3f}{e["policy"]:>9.3f}'
          f'{e["effect"]:>+9.3f}{f"{lo:+.3f} to {hi:+.3f}":>18}'
          f'{e["policy_higher"]:>7} of {e["prompts"]:<4}'
          f'{e.get("reference_nonzero", 0):>8.0%} -> {e.get("policy_nonzero", 0):.0%}')
  e = ev['check']
  verdict = ('excludes zero' if e['effect_ci95'][0] > 0 or e['effect_ci95'][1] < 0
             else 'contains zero')
  print(f'the 95% interval of the effect {verdict}')
  if rows:
    k = max(1, len(rows) // 5)
    mean = lambda part, key: sum(r[key] for r in part) / len(part)
    terms = sorted({key for r in rows for key in r if key.startswith('reward/')})
    print(f'RL, {len(rows)} iterations (means of the first and last {k}): ' + ', '.join(
        f'{key} {mean(rows[:k], key):.3f} -> {mean(rows[-k:], key):.3f}'
        for key in ('reward', *terms, 'kl') if all(key in r for r in rows)))
  if 'reward_hacking' in ev:
    print(ev['reward_hacking']['text'])
  print('minutes: ' + ', '.join(f'{s} {t / 60:.1f}' for s, t in stage_seconds.items()) +
        f'; this command {seconds / 60:.1f} (stages skipped when already done)')


if __name__ == '__main__':
  main()
