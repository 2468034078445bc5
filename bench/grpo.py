"""Seconds per GRPO iteration: rlaif_jax's RL loop (rl.algorithm=grpo) vs TRL's `GRPOTrainer`.

SmolLM2-135M-Instruct as policy and reference (float32, one folder that rlaif_jax exports from the
embedded GGUF, read by both sides). One iteration = 16 prompts x 4 samples of up to 128 new tokens
(temperature 1.0; each answer ends at the model's end-of-turn token, and both sides stop decoding
once every row has ended), a programmatic reward on the decoded text (the same function on both
sides: closeness of the word count to 30), group-normalised advantages, the reference's log-probs
for a k3 KL loss term (beta 0.04), and one optimizer step (AdamW) on all 64 rows as two accumulated
micro-batches of 32 on both sides, with GRPO's per-response loss mean ("grpo" loss type) and clip
0.2: TRL with per_device_train_batch_size=32, gradient_accumulation_steps=2, num_generations=4,
steps_per_generation=2 (one generation of 64 per optimizer step), num_iterations=1. Each side runs
in its own process; TRL in its own environment (bench/.venv-trl-grpo, created on first use with
`pip install trl==1.16.0 torch==2.13.0`; trl is never a requirement of rlaif_jax). The first
iteration (our compilation, TRL's warm-up) is reported apart; "steady" is the median of the others.

After its iterations our side times its rollout again in the same process, with the trained
weights, three ways: as run (each prompt prefilled once for its 4 samples, early exit), with every
row prefilled on its own (group=1), and without early exit (always 128 steps): the share of the
saving from prefix sharing and from early exit.

  bash launch/test.sh --co -q >/dev/null   # (once) our environment with the test extra
  .venv/bin/python -m bench.grpo [--iterations 4]
"""

import argparse
import json
import os
import sys
import tempfile

import numpy as np

from bench import machine
from bench.ppo import PROMPTS, ensure_trl_env, export_smollm2, run_sides

HERE = os.path.dirname(os.path.abspath(__file__))
TRL_ENV = os.path.join(HERE, '.venv-trl-grpo')
TRL_PINS = ('trl==1.16.0', 'torch==2.13.0')
SETTINGS = dict(new_tokens=128, samples=4, micro_batches=2, temperature=1.0, beta=0.04,
                clip_eps=0.2, learning_rate=1e-6, target_words=30)


def word_count_reward(text: str, target: int = SETTINGS['target_words']) -> float:
  """The programmatic reward both sides use: 1 at `target` words, falling linearly to 0 at 0 or
  2 x target words (and below 0 past that)."""
  return 1.0 - abs(len(text.split()) - target) / target


def prepare(workdir: str) -> tuple[str, str]:
  """Export SmolLM2 to a HF folder; write the prompts and settings both sides read."""
  folder, _, _ = export_smollm2(workdir)
  spec = os.path.join(workdir, 'spec.json')
  with open(spec, 'w') as f:
    json.dump({'prompts': PROMPTS, **SETTINGS}, f)
  return folder, spec


def run_ours(folder: str, spec_path: str, iterations: int, out: str) -> None:
  import resource

  import jax
  import jax.numpy as jnp
  from flax import nnx

  from rlaif_jax.generation import sampler
  from rlaif_jax.generation import text as text_lib
  from rlaif_jax.infra import distributed
  from rlaif_jax.infra import sharding as shd
  from rlaif_jax.models import loading
  from rlaif_jax.rl import config as rl_config
  from rlaif_jax.rl import loop as rl_loop
  from rlaif_jax.rl import rewards
  from rlaif_jax.training import state as train_state
  with open(spec_path) as f:
    spec = json.load(f)
  devices = jax.devices()
  mesh = shd.make_mesh({'data': len(devices)}, devices)
  policy, tok = loading.load_model(folder, mesh)
  reference = jax.tree.map(jnp.copy, nnx.state(policy, nnx.Param))

  def reward_source(x: rewards.Responses) -> rewards.Rewards:
    response, mask = distributed.to_host((x.response, x.mask))
    texts = [tok.decode(r[m], skip_special_tokens=True) for r, m in zip(response, mask)]
    s = np.asarray([word_count_reward(t, spec['target_words']) for t in texts], np.float32)
    return rewards.Rewards(s, s)

  # two micro-batches of 32 rows: the same update (gradients accumulated, each weighed by its share
  # of the responses), with half the activations alive (64 rows at once peaked near this VM's 24 GB)
  cfg = rl_config.RLConfig('grpo', samples_per_prompt=spec['samples'], epochs=1, minibatches=1,
                           micro_batches=spec['micro_batches'],
                           kl_in='loss', kl_estimator='k3', kl_coef=spec['beta'],
                           loss_aggregation='sequence_mean', scale_rewards='group',
                           clip_eps=spec['clip_eps'])
  settings = sampler.SamplingConfig(spec['new_tokens'], temperature=spec['temperature'],
                                    stop_tokens=text_lib.stop_tokens(tok))
  optimizer = train_state.make_optimizer(spec['learning_rate'], iterations)
  loop = rl_loop.RLLoop(policy, mesh, cfg, settings, optimizer, reward_source,
                        pad_id=tok.pad_token_id)
  prompts = text_lib.encode_prompt_batch(tok, spec['prompts'],
                                         max(map(len, text_lib.encode_texts(tok, spec['prompts'],
                                                                            True))))
  state, key = loop.init(), jax.random.key(0)
  rows = []
  for i in range(iterations):
    key, k = jax.random.split(key)
    state, _, metrics = loop.iteration(state, reference, cfg.kl_coef, prompts, k)
    rows.append(metrics)
    print(f'rlaif_jax iteration {i + 1}/{iterations}: {metrics["seconds"]:.1f} s (rollout '
          f'{metrics["time_rollout"]:.1f}, scoring {metrics["time_scoring"]:.1f}, update '
          f'{metrics["time_update"]:.1f}), reward {metrics["score"]:.3f}, mean answer '
          f'{metrics["response_length"]:.0f} tokens, {metrics["decode_steps"]} decode steps',
          flush=True)
  ablation = rollout_ablation(policy, mesh, settings, cfg.samples_per_prompt, tok.pad_token_id,
                              state.params['policy'], prompts, loop.sample, key)
  with open(out, 'w') as f:
    json.dump({'seconds': [r['seconds'] for r in rows], 'rollout': [r['time_rollout'] for r in rows],
               'scoring': [r['time_scoring'] for r in rows], 'update': [r['time_update'] for r in rows],
               'reward': [r['score'] for r in rows],
               'mean_length': [r['response_length'] for r in rows],
               'capped': [1 - r['stopped_fraction'] for r in rows],
               'decode_steps': [r['decode_steps'] for r in rows], 'ablation': ablation,
               'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               'jax': jax.__version__}, f)


def rollout_ablation(policy, mesh, settings, group: int, pad_id: int, params, prompts, as_run,
                     key, repeats: int = 2) -> dict:
  """Seconds per rollout (median of `repeats`, after one compiling call) of the sampler as run and
  with one of its savings off, on the same weights and prompts: {name: {seconds, steps}}."""
  import dataclasses
  import time

  import jax

  from rlaif_jax.generation import sampler
  tokens, valid = np.repeat(prompts.tokens, group, 0), np.repeat(prompts.valid, group, 0)
  variants = {
      'as run': as_run,
      'no prefix sharing (group=1)': sampler.make_sampler(policy, mesh, settings, pad_id, 1),
      'no early exit': sampler.make_sampler(
          policy, mesh, dataclasses.replace(settings, early_exit=False), pad_id, group)}
  results = {}
  for name, fn in variants.items():
    jax.block_until_ready(fn(params, tokens, valid, key))  # compiles (as run: already compiled)
    seconds, steps = [], []
    for k in jax.random.split(jax.random.fold_in(key, 1), repeats):  # same keys for every variant
      t0 = time.perf_counter()
      out = jax.block_until_ready(fn(params, tokens, valid, k))
      seconds.append(time.perf_counter() - t0)
      steps.append(int(out.steps))
    results[name] = {'seconds': float(np.median(seconds)), 'steps': steps}
    print(f'rlaif_jax rollout, {name}: {results[name]["seconds"]:.1f} s, decode steps {steps}',
          flush=True)
  return results


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--iterations', type=int, default=4)  # per side; the first is reported apart
  ap.add_argument('--side', choices=('ours',), help=argparse.SUPPRESS)
  ap.add_argument('--folder', help=argparse.SUPPRESS)
  ap.add_argument('--spec', help=argparse.SUPPRESS)
  ap.add_argument('--out', help=argparse.SUPPRESS)
  ap.add_argument('--report', metavar='DIR', help='print the table of a finished run again')
  args = ap.parse_args()
  if args.side == 'ours':
    return run_ours(args.folder, args.spec, args.iterations, args.out)
  if args.report:
    results = {}
    for name in ('rlaif_jax', 'TRL'):
      with open(os.path.join(args.report, f'{name}.json')) as f:
        results[name] = json.load(f)
    return report(args.report, results, len(results['TRL']['seconds']))
  trl_python = ensure_trl_env(TRL_ENV, TRL_PINS)
  work = tempfile.mkdtemp(prefix='bench_grpo_')
  folder, spec = prepare(work)
  ours_cmd = [sys.executable, '-m', 'bench.grpo', '--side', 'ours', '--spec', spec]
  sides = [('rlaif_jax', ours_cmd, 1),
           ('TRL', [trl_python, os.path.join(HERE, 'grpo_trl.py'), '--spec', spec], None)]
  # (no data-parallel row as in bench.ppo: one CPU device per core ran out of this VM's 24 GB here)
  report(work, run_sides(sides, work, folder, args.iterations), args.iterations)


def report(work: str, results: dict, iterations: int) -> None:
  ours, trl = results['rlaif_jax'], results['TRL']
  steady = lambda r, k='seconds': float(np.median(r[k][1:]))
  print(f'\nGRPO iteration, SmolLM2-135M-Instruct policy + reference, float32, {len(PROMPTS)} prompts '
        f'x {SETTINGS["samples"]} samples -> up to {SETTINGS["new_tokens"]} new tokens (stop at '
        f'end of turn), one AdamW step in {SETTINGS["micro_batches"]} micro-batches, '
        f'{machine.describe()}; jax {ours["jax"]}, torch {trl["torch"]}, trl {trl["trl"]}; '
        f'{iterations} iterations each; results in {work}')
  print(machine.matmul_rates())
  print(f'{"":<18}{"s/iter steady":>15}{"first iter":>12}{"rollout":>10}{"scoring":>9}'
        f'{"update":>8}{"peak RSS MB":>13}{"TRL / this":>12}')
  for name, r in results.items():
    split = (f'{steady(r, "rollout"):>10.1f}{steady(r, "scoring"):>9.1f}{steady(r, "update"):>8.1f}'
             if 'scoring' in r else f'{"":>27}')
    print(f'{name:<18}{steady(r):>15.1f}{r["seconds"][0]:>12.1f}{split}{r["peak_rss_mb"]:>13.0f}'
          f'{steady(trl) / steady(r):>11.2f}x')
  print(f'{"":<18}{"mean answer":>15}{"capped":>12}')
  for name, r in results.items():
    print(f'{name:<18}{np.mean(r["mean_length"][1:]):>15.1f}{np.mean(r["capped"][1:]):>12.0%}')
  print('first iter: rlaif_jax compiles its jitted steps in it; TRL warms up. TRL\'s step time '
        'includes its generation, reference and reward passes (not split here). mean answer: tokens '
        'per answer (stop token included); capped: the share of answers that reached the cap.')
  ablation = ours.get('ablation')
  if ablation:
    base = ablation['as run']['seconds']
    saved = steady(trl) - steady(ours)
    print(f'\nrlaif_jax rollout ablation (same process, trained weights, same keys):\n'
          f'{"":<30}{"s/rollout":>10}{"decode steps":>14}{"cost of losing it":>19}{"share of saving":>17}')
    for name, a in ablation.items():
      extra = a['seconds'] - base
      share = f'{extra / saved:>16.0%}' if name != 'as run' and saved > 0 else f'{"":>16}'
      print(f'{name:<30}{a["seconds"]:>10.1f}{str(a["steps"]):>14}{extra:>+18.1f}s{share}')
    print('share of saving: the seconds a rollout gains without that saving, over the seconds per '
          'iteration rlaif_jax saves against TRL.')


if __name__ == '__main__':
  main()
