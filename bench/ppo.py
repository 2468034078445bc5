"""Seconds per PPO iteration: rlaif_jax's RL loop vs TRL's PPO trainer, same weights and shapes.

SmolLM2-135M-Instruct as policy, reference, value model and reward model (all float32, all four
loaded from one folder that rlaif_jax exports from the embedded GGUF, with the same scalar head for the
value and reward models). One iteration = rollout of 16 prompts x 64 new tokens (temperature 0.7, no
early stop on either side), reference / value / reward scoring, then 4 PPO epochs of one 16-row
minibatch updating policy and value model (AdamW), as TRL's `PPOTrainer` (trl 0.29.1,
`trl.experimental.ppo`) does with the same settings. Each side runs in its own process, one after the
other, so peak memory (max RSS) is per side; TRL runs in its own environment (bench/.venv-trl, created
on first use with `pip install trl==0.29.1 torch==2.13.0`; trl is never a requirement of rlaif_jax).
The first iteration (compilation for us, warm-up for torch) is reported apart; "steady" is the median
of the others. Both sides run with the same host allocator settings (`rlaif_jax.infra.host`: glibc keeps
freed memory instead of page-faulting it in again every step), which `launch/` scripts set for users.

  bash launch/test.sh --co -q >/dev/null   # (once) our environment with the test extra
  .venv/bin/python -m bench.ppo [--iterations 4]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from bench import machine
from rlaif_jax.infra import host

HERE = os.path.dirname(os.path.abspath(__file__))
TRL_ENV = os.path.join(HERE, '.venv-trl')
TRL_PINS = ('trl==0.29.1', 'torch==2.13.0')

PROMPTS = [
    'What is the capital of France?', 'Give me three tips for staying healthy.',
    'Describe a sunset in one sentence.', 'How do airplanes stay in the air?',
    'Write a haiku about the sea.', 'What is a prime number?', 'Suggest a name for a pet turtle.',
    'Why is the sky blue?', 'How do I boil an egg?', 'What does a compiler do?',
    'Tell me a fun fact about octopuses.', 'What is the difference between weather and climate?',
    'Recommend a good habit for mornings.', 'Explain photosynthesis briefly.',
    'How many legs does a spider have?', 'What is your favourite book and why?',
]
SETTINGS = dict(new_tokens=64, temperature=0.7, epochs=4, minibatches=1, kl_coef=0.05, vf_coef=0.1,
                clip_eps=0.2, value_clip=0.2, learning_rate=3e-6)


def ensure_trl_env(env: str = TRL_ENV, pins: tuple = TRL_PINS) -> str:
  """The python of a benchmark's own TRL environment, created with `pins` on first use."""
  python = os.path.join(env, 'bin', 'python')
  if not os.path.exists(python):
    print(f'creating {env} with {" ".join(pins)} (first run only)...', flush=True)
    subprocess.run([sys.executable, '-m', 'venv', env], check=True)
    subprocess.run([python, '-m', 'pip', 'install', '-q', *pins], check=True)
  return python


def export_smollm2(workdir: str):
  """The embedded SmolLM2 exported to workdir/smollm2_hf: (folder, model, tokenizer)."""
  import jax
  from flax import nnx

  from rlaif_jax.infra import sharding as shd
  from rlaif_jax.models import hf_checkpoint, loading
  mesh = shd.make_mesh({'data': 1}, jax.devices()[:1])
  model, tok = loading.load_model('smollm2', mesh)
  folder = os.path.join(workdir, 'smollm2_hf')
  hf_checkpoint.export_folder(nnx.state(model), model.cfg, folder, tok)
  return folder, model, tok


def prepare(workdir: str) -> tuple[str, str]:
  """Export SmolLM2 (with a scalar head) to a HF folder and write the prompt token ids."""
  from rlaif_jax.generation import text as text_lib
  folder, model, tok = export_smollm2(workdir)
  # the same value / reward head on both sides: LlamaForSequenceClassification's `score` [1, E]
  # (a causal LM loading the folder ignores it)
  from rlaif_jax.models import safetensors_io
  path = os.path.join(folder, 'model.safetensors')
  tensors = dict(safetensors_io.read(path))
  tensors['score.weight'] = np.random.default_rng(0).normal(
      0, 0.02, (1, model.cfg.hidden_size)).astype(np.float32)
  safetensors_io.write(path + '.tmp', tensors, {'format': 'pt'})
  os.replace(path + '.tmp', path)
  ids = [list(map(int, x)) for x in text_lib.encode_texts(tok, PROMPTS, chat=True)]
  spec = os.path.join(workdir, 'prompts.json')
  with open(spec, 'w') as f:
    json.dump({'prompts': ids, **SETTINGS}, f)
  return folder, spec


def run_ours(folder: str, spec_path: str, iterations: int, out: str) -> None:
  """Our side, in a child process whose XLA_FLAGS set the number of CPU devices (the mesh is
  data-parallel over all of them)."""
  import resource

  import jax
  import jax.numpy as jnp
  from flax import nnx

  from rlaif_jax.generation import sampler
  from rlaif_jax.generation import text as text_lib
  from rlaif_jax.infra import sharding as shd
  from rlaif_jax.models import loading, safetensors_io
  from rlaif_jax.rl import config as rl_config
  from rlaif_jax.rl import loop as rl_loop
  from rlaif_jax.rl import rewards
  from rlaif_jax.training import reward_model as rm
  from rlaif_jax.training import state as train_state
  with open(spec_path) as f:
    spec = json.load(f)
  devices = jax.devices()
  mesh = shd.make_mesh({'data': len(devices)}, devices)
  policy, tok = loading.load_model(folder, mesh)
  reference = jax.tree.map(jnp.copy, nnx.state(policy, nnx.Param))
  value, _ = loading.load_model(folder, mesh, scalar_head=True)
  reward, _ = loading.load_model(folder, mesh, scalar_head=True)
  head = safetensors_io.read(os.path.join(folder, 'model.safetensors'))['score.weight'].reshape(-1)
  assert np.allclose(np.asarray(value.scalar_head[...]), head)  # the same head as TRL's models
  reward_source = rewards.reward_model_rewards(reward, nnx.state(reward, nnx.Param), mesh,
                                               rm.RewardStats(0.0, 1.0))  # raw scores, as TRL uses them
  cfg = rl_config.RLConfig('ppo', epochs=spec['epochs'], minibatches=spec['minibatches'],
                           value_model='separate', kl_coef=spec['kl_coef'], vf_coef=spec['vf_coef'],
                           clip_eps=spec['clip_eps'], value_clip=spec['value_clip'])
  settings = sampler.SamplingConfig(spec['new_tokens'], temperature=spec['temperature'])
  optimizer = train_state.make_optimizer(spec['learning_rate'], iterations * spec['epochs'])
  loop = rl_loop.RLLoop(policy, mesh, cfg, settings, optimizer, reward_source, value, tok.pad_token_id)
  length = max(map(len, spec['prompts']))
  tokens, valid = text_lib.left_pad(spec['prompts'], length, tok.pad_token_id)
  prompts = text_lib.PromptBatch(tokens, valid)
  state, kl_coef, key = loop.init(), cfg.kl_coef, jax.random.key(0)
  rows = []
  for i in range(iterations):
    key, k = jax.random.split(key)
    state, kl_coef, metrics = loop.iteration(state, reference, kl_coef, prompts, k)
    rows.append(metrics)
    print(f'rlaif_jax iteration {i + 1}/{iterations}: {metrics["seconds"]:.1f} s '
          f'(rollout {metrics["time_rollout"]:.1f}, scoring {metrics["time_scoring"]:.1f}, '
          f'update {metrics["time_update"]:.1f}), kl {metrics["kl"]:.3f}', flush=True)
  with open(out, 'w') as f:
    json.dump({'seconds': [r['seconds'] for r in rows], 'rollout': [r['time_rollout'] for r in rows],
               'scoring': [r['time_scoring'] for r in rows], 'update': [r['time_update'] for r in rows],
               'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               'jax': jax.__version__}, f)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--iterations', type=int, default=4)  # per side; the first is reported apart
  ap.add_argument('--side', choices=('ours',), help=argparse.SUPPRESS)  # child process mode
  ap.add_argument('--folder', help=argparse.SUPPRESS)
  ap.add_argument('--spec', help=argparse.SUPPRESS)
  ap.add_argument('--out', help=argparse.SUPPRESS)
  ap.add_argument('--report', metavar='DIR', help='print the table of a finished run again')
  args = ap.parse_args()
  if args.side == 'ours':
    return run_ours(args.folder, args.spec, args.iterations, args.out)
  if args.report:  # print the table again from a finished run's directory
    results = {}
    for name in ('rlaif_jax', f'rlaif_jax data={os.cpu_count()}', 'TRL'):
      path = os.path.join(args.report, f'{name.replace(" ", "_")}.json')
      if os.path.exists(path):
        with open(path) as f:
          results[name] = json.load(f)
    return report(args.report, results, len(results['TRL']['seconds']))
  trl_python = ensure_trl_env()
  work = tempfile.mkdtemp(prefix='bench_ppo_')
  folder, spec = prepare(work)
  results = {}
  with open(os.path.join(work, 'glibc_tunables.txt'), 'w') as f:
    f.write(host.allocator_env()['GLIBC_TUNABLES'])
  ours_cmd = [sys.executable, '-m', 'bench.ppo', '--side', 'ours', '--spec', spec]
  sides = [('rlaif_jax', ours_cmd, 1), ('TRL', [trl_python, os.path.join(HERE, 'ppo_trl.py'),
                                                '--prompts', spec], None)]
  if os.cpu_count() > 1:  # the same loop on one XLA CPU device per core, data parallel
    sides.insert(1, (f'rlaif_jax data={os.cpu_count()}', ours_cmd, os.cpu_count()))
  results.update(run_sides(sides, work, folder, args.iterations))
  report(work, results, args.iterations)


def run_sides(sides: list, work: str, folder: str, iterations: int) -> dict:
  """Each side (name, command, XLA CPU devices or None) in its own process, one after the other,
  with the same allocator settings; returns each side's JSON results by name."""
  results = {}
  for side, cmd, devices in sides:
    out = os.path.join(work, f'{side.replace(" ", "_")}.json')
    env = host.allocator_env()  # the same for both sides
    if devices:
      env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
    subprocess.run(cmd + ['--folder', folder, '--iterations', str(iterations), '--out', out],
                   check=True, cwd=os.path.dirname(HERE), env=env)
    with open(out) as f:
      results[side] = json.load(f)
  return results


def report(work: str, results: dict, iterations: int) -> None:
  ours, trl = results['rlaif_jax'], results['TRL']
  steady = lambda r, k='seconds': float(np.median(r[k][1:]))
  with open(os.path.join(work, 'prompts.json')) as f:
    p = max(map(len, json.load(f)['prompts']))
  tunables_file = os.path.join(work, 'glibc_tunables.txt')
  tunables = open(tunables_file).read() if os.path.exists(tunables_file) else 'not recorded'
  print(f'\nPPO iteration, SmolLM2-135M-Instruct as policy / reference / value / reward model, float32, '
        f'batch {len(PROMPTS)} x prompt {p} -> {SETTINGS["new_tokens"]} new tokens, '
        f'{SETTINGS["epochs"]} epochs x {SETTINGS["minibatches"]} minibatch, {machine.describe()}; '
        f'jax {ours["jax"]}, torch {trl["torch"]}, trl {trl["trl"]}; '
        f'{iterations} iterations each; results in {work}')
  print(machine.matmul_rates())
  print(f'{"":<18}{"s/iter steady":>15}{"first iter":>12}{"rollout":>10}{"scoring":>9}'
        f'{"update":>8}{"peak RSS MB":>13}{"TRL / this":>12}')
  for name, r in results.items():
    roll = steady(r, 'rollout')
    split = (f'{steady(r, "scoring"):>9.1f}{steady(r, "update"):>8.1f}' if 'scoring' in r
             else f'  (together {steady(r) - roll:.1f})')
    print(f'{name:<18}{steady(r):>15.1f}{r["seconds"][0]:>12.1f}{roll:>10.1f}{split}'
          f'{r["peak_rss_mb"]:>13.0f}{steady(trl) / steady(r):>11.2f}x')
  print('first iter: rlaif_jax compiles its jitted steps in it; TRL warms up. Peak RSS: each side '
        'in its own process, including its four models and optimizer state. GLIBC_TUNABLES for both: '
        f'{tunables or "(none)"}')


if __name__ == '__main__':
  main()
