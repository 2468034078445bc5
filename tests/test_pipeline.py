"""The whole pipeline on a tiny random model: every stage, exact resume after SIGKILL, SIGTERM."""

import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from configs import tiny
from rlaif_jax.data import prompts as prompts_lib
from rlaif_jax.infra import checkpoints
from rlaif_jax.infra import metrics
from rlaif_jax.models import hf_checkpoint
from rlaif_jax.models import loading
from rlaif_jax.pipeline import context
from rlaif_jax.pipeline import training_loop
from rlaif_jax.pipeline import runner
from rlaif_jax.rl import config as rl_config
from tests import helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def finite_rows(rows, keys):
  for r in rows:
    for k in keys:
      assert isinstance(r[k], float) and math.isfinite(r[k]), (k, r)


def test_every_stage_on_a_tiny_config(tmp_path, tiny_hf_folder, capsys):
  config = tiny.get_config()
  config.model.source = tiny_hf_folder
  summaries = runner.run_stages(config, str(tmp_path))
  assert list(summaries) == list(config.stages)
  table = capsys.readouterr().out.split('wall time')[-1]  # the summary printed at the end
  for words in ('pairs labeled', 'held-out accuracy', 'reward', 'KL', 'win rate vs reference', 'total',
                'rl_reward_kl.png'):
    assert words in table, table
  timing = json.load(open(tmp_path / 'summary.json'))['seconds']
  assert set(timing) == set(config.stages) and all(t > 0 for t in timing.values())

  # sft: revisions of the policy's own responses, then fine-tuning on them
  revisions = [json.loads(line) for line in open(tmp_path / 'sft' / 'revisions.jsonl')]
  assert len(revisions) == config.sft.num_examples and all(r['principle'] for r in revisions)
  assert (tmp_path / 'sft' / 'policy' / 'DONE.json').exists()
  # label: two responses for each of the 16 train prompts, judged in both orders
  label = summaries['label']
  assert label['pairs'] == 24 - config.data.num_heldout and 0 <= label['position_consistency'] <= 1
  # reward model: held-out accuracy and statistics
  rm_info = json.load(open(tmp_path / 'reward_model' / 'model' / 'reward_stats.json'))
  assert 0 <= rm_info['accuracy_ai'] <= 1 and rm_info['std'] > 0 and rm_info['eval_pairs'] == 4
  # it trained and evaluated on exactly the label stage's rows
  assert rm_info['train_pairs'] + rm_info['eval_pairs'] == label['pairs'] - label['skipped']
  # rl: one finite metrics row per iteration, in metrics.jsonl and TensorBoard
  rl_rows = metrics.read(str(tmp_path), 'rl')
  assert [r['step'] for r in rl_rows] == list(range(1, config.rl.iterations + 1))
  finite_rows(rl_rows, ('reward', 'reward_raw', 'kl', 'entropy', 'approx_kl', 'explained_variance'))
  assert [r['step'] for r in metrics.read(str(tmp_path), 'reward_model')] == list(range(1, 7))
  for stage in ('sft', 'reward_model', 'rl'):
    assert list((tmp_path / 'tensorboard' / stage).glob('events.out.tfevents.*')), stage
  # eval: win rate with its interval, harmless rates, the report and its plots
  ev = json.load(open(tmp_path / 'eval' / 'eval.json'))
  lo, hi = ev['win_rate_ci95']
  assert ev['prompts'] == 8 and 0 <= lo <= ev['win_rate'] <= hi <= 1
  assert ev['wins'] + ev['ties'] + ev['losses'] == 8
  assert ev['policy_from'].endswith('rl/policy') and ev['reference_from'].endswith('sft/policy')
  assert 0 <= ev['harmless_rate_policy'] <= 1
  for name in ('report.md', 'rl_reward_kl.png', 'win_rate.png', 'reward_model.png'):
    assert (tmp_path / 'eval' / name).stat().st_size > 0, name
  # export: a Hugging Face folder holding exactly the RL policy's parameters
  exported, _ = loading.load_model(str(tmp_path / 'export'))
  run = context.RunContext(config, str(tmp_path))
  trained, _ = run.policy()
  want, got = hf_checkpoint.host_arrays(trained), hf_checkpoint.host_arrays(exported)
  assert sorted(want) == sorted(got)
  for name in want:
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)
  base = hf_checkpoint.host_arrays(run.load('')[0])
  assert sum(not np.array_equal(want[n], base[n]) for n in want) > len(want) // 2  # training moved it

  # a second run finds every output complete and skips every stage
  again = runner.run_stages(config, str(tmp_path))
  assert again['eval'] == ev and len(metrics.read(str(tmp_path), 'rl')) == len(rl_rows)
  assert json.load(open(tmp_path / 'summary.json'))['seconds'] == timing  # times of the real runs


def _command(workdir, source, *extra):
  return [sys.executable, '-m', 'rlaif_jax.main', '--config=configs/tiny.py', f'--workdir={workdir}',
          f'--config.model.source={source}', "--config.stages=('label','reward_model','rl')",
          '--config.rl.iterations=8', *extra]


def _env():
  return dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2')


def _rl_rows(workdir):
  return helpers.metric_rows(workdir, 'rl')


def _wait_for_rl_rows(proc, workdir, n, timeout=300):
  t0 = time.time()
  while len(metrics.read(str(workdir), 'rl')) < n:
    assert proc.poll() is None, f'exited with {proc.returncode}'
    assert time.time() - t0 < timeout
    time.sleep(0.2)


def test_sigkill_at_a_random_step_then_resume_gives_the_same_result(tmp_path, tiny_hf_folder):
  straight = tmp_path / 'straight'
  r = subprocess.run(_command(straight, tiny_hf_folder), cwd=ROOT, env=_env(), capture_output=True,
                     text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]

  killed = tmp_path / 'killed'
  # RL iterations finished before the kill; two more are left, so the kill lands before the end.
  # The step is drawn from a seed (0 unless RLAIF_KILL_SEED sets another) that a failure names,
  # so it replays
  seed = int(os.environ.get('RLAIF_KILL_SEED', '0'))
  kill_after = random.Random(seed).randint(1, 6)
  print(f'killing after RL iteration {kill_after} (RLAIF_KILL_SEED={seed})')
  log = open(tmp_path / 'killed.log', 'w')  # a file, not a pipe nobody reads while it fills
  proc = subprocess.Popen(_command(killed, tiny_hf_folder), cwd=ROOT, env=_env(), stdout=log,
                          stderr=log)
  _wait_for_rl_rows(proc, killed, kill_after)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (killed / 'rl' / 'DONE.json').exists()  # killed during RL, not after it
  # checkpoints are saved asynchronously: the kill may land before the first one is finalized
  ckpt_dir = killed / 'rl' / 'checkpoints'
  saved = [d for d in os.listdir(ckpt_dir) if d.isdigit()] if ckpt_dir.is_dir() else []
  r = subprocess.run(_command(killed, tiny_hf_folder), cwd=ROOT, env=_env(), capture_output=True,
                     text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  assert ('[rl] resumed at step' in r.stdout) == bool(saved), (kill_after, seed, saved,
                                                              r.stdout[-2000:])

  assert _rl_rows(killed) == _rl_rows(straight), (f'killed after iteration {kill_after} '
                                                  f'(RLAIF_KILL_SEED={seed})')
  run_a = context.RunContext(_tiny(tiny_hf_folder), str(straight))
  run_b = context.RunContext(_tiny(tiny_hf_folder), str(killed))
  a, b = (hf_checkpoint.host_arrays(r.policy()[0]) for r in (run_a, run_b))
  for name in a:
    np.testing.assert_array_equal(b[name], a[name], err_msg=name)


def _tiny(source):
  config = tiny.get_config()
  config.model.source = source
  return config


def test_sigterm_saves_a_checkpoint_and_the_same_command_resumes(tmp_path, tiny_hf_folder):
  cmd = _command(tmp_path, tiny_hf_folder, '--config.checkpoint.interval=100')
  with open(tmp_path / 'out.log', 'w') as out, open(tmp_path / 'err.log', 'w') as err:
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=out, stderr=err)
    _wait_for_rl_rows(proc, tmp_path, 2)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=300)
  assert proc.returncode == 143, (tmp_path / 'err.log').read_text()[-3000:]
  assert 'SIGTERM: saved the checkpoint of step' in (tmp_path / 'out.log').read_text()
  saved = sorted(int(p.name) for p in (tmp_path / 'rl' / 'checkpoints').iterdir() if p.name.isdigit())
  assert saved and saved[-1] >= 2  # beyond the first iteration, though the interval is 100
  r = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  assert [row['step'] for row in metrics.read(str(tmp_path), 'rl')] == list(range(1, 9))


@pytest.mark.parametrize('flag, expected', [
    ('--config.rl.algorithm=dqn', "Unknown rl.algorithm 'dqn'"),
    ('--config.rl.minibatches=3', r'rl.batch_size x rl.samples_per_prompt = 8 rows do not split into '
                                  r'rl.minibatches=3'),
    ('--config.reward_model.batch_size=3', r'reward_model.batch_size=3 gives \(micro-\)batches of 3 '
                                           r'rows, which do not split over the 2 devices'),
    ('--config.judge.constitution=/no/such/principles.txt',
     r"judge.constitution='/no/such/principles.txt' does not exist"),
    ('--workdir=/proc/rlaif_jax_run', r'--workdir=/proc/rlaif_jax_run: cannot write there'),
    ('--config.model.param_dtype=bfloat16', r'model.param_dtype=bfloat16 would keep the trained '
                                            r'weights.*model.dtype=bfloat16'),
    ('--config.data.source=tfds:no_such_dataset_here', r"data.source='tfds:no_such_dataset_here' "
                                                       r'cannot be read here.*JSONL'),
    ('--config.model.source=TMP/truncated', r'model.safetensors is truncated or not a safetensors '
                                            r'file.*again'),
    ('--config.checkpoint.restore_from=/no/such/ckpt', 'restore_from.*not an existing checkpoint'),
    ('--config.data.source=/no/such/prompts.jsonl', 'Prompt file /no/such/prompts.jsonl does not exist'),
    ('--config.data.source=TMP/empty.jsonl', 'empty.jsonl has no prompts; add rows like'),
    ('--config.data.source=TMP/bad.jsonl', r'bad.jsonl:2: not valid JSON'),
])
def test_bad_pipeline_input_is_one_line_error(tmp_path, tiny_hf_folder, flag, expected):
  import re
  (tmp_path / 'empty.jsonl').write_text('\n')
  (tmp_path / 'bad.jsonl').write_text('{"prompt": "fine"}\n{"prompt": "unclosed}\n')
  shutil.copytree(tiny_hf_folder, tmp_path / 'truncated')
  weights = tmp_path / 'truncated' / 'model.safetensors'
  weights.write_bytes(weights.read_bytes()[:weights.stat().st_size * 2 // 3])
  flag = flag.replace('TMP', str(tmp_path))
  t0 = time.time()
  r = subprocess.run(_command(tmp_path / 'run', tiny_hf_folder, flag), cwd=ROOT, env=_env(),
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 2, r.stderr[-2000:]
  errors = [line for line in r.stderr.splitlines() if line.startswith('rlaif_jax: error:')]
  assert len(errors) == 1 and re.search(expected, errors[0]), r.stderr[-2000:]
  assert 'Traceback' not in r.stderr and len(errors[0]) < 400
  if 'model.source' not in flag:  # the config or the data shows it: no stage starts
    assert 'starting' not in r.stdout, r.stdout[-2000:]
  print(f'{flag}: {time.time() - t0:.1f} s')


def test_a_bug_in_the_library_keeps_its_traceback(tmp_path):
  code = ('import sys\n'
          'from rlaif_jax import main\n'
          'from rlaif_jax.pipeline import runner\n'
          'def broken(config, workdir):\n'
          '  raise ValueError("a bug, not a user error")\n'
          'runner.run_stages = broken\n'
          'main.cli()\n')
  r = subprocess.run([sys.executable, '-c', code, '--config=configs/tiny.py', f'--workdir={tmp_path}'],
                     cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
  assert r.returncode == 1, r.stderr[-2000:]
  assert 'Traceback' in r.stderr and 'ValueError: a bug, not a user error' in r.stderr
  assert 'rlaif_jax: error' not in r.stderr


@pytest.mark.parametrize('name, arg', [
    ('smollm2_demo', None), ('smollm2_demo', 'rlaif,sample'), ('smollm2_demo', 'compare'),
    ('smollm2_demo', 'oracle'),
    ('tldr_summarization', None),
    ('tldr_summarization', 'drlaif'), ('hh_dialogue', None), ('tiny', None)])
def test_every_config_builds_and_documents_its_command(name, arg):
  import importlib
  module = importlib.import_module(f'configs.{name}')
  c = module.get_config(arg)
  assert c.stages and set(c.stages) <= set(runner.STAGES)
  cfg = rl_config.RLConfig.from_config(c.rl)
  assert cfg.reward == {'drlaif': 'judge', 'rlaif,sample': 'judge_yes_no',
                        'oracle': 'check:exclamations'}.get(arg, 'reward_model')
  assert 'python -m rlaif_jax.main --config=configs/' in module.__doc__
  with pytest.raises(ValueError, match='option'):
    module.get_config('no_such_option')


def test_too_many_non_finite_steps_in_a_row_stop_with_the_checkpoint_named(tmp_path):
  ckpt = checkpoints.Checkpoints(str(tmp_path / 'ckpt'))
  guard = training_loop.NonFiniteGuard(2, 'rl', ckpt)
  for step, skipped in enumerate([1, 1, 0, 1, 1], 1):  # a finite step resets the count
    guard.check(step, skipped)
  assert guard.total == 4
  with pytest.raises(FloatingPointError, match=r'3 steps in a row .* last good checkpoint'):
    guard.check(6, 1.0)
  ckpt.close()


def test_jsonl_prompts_go_through_tfds_and_bad_rows_are_named(tmp_path):
  cfg = tiny.get_config().data
  good = tmp_path / 'prompts.jsonl'
  good.write_text('{"text": "first prompt"}\n\n{"text": " second prompt "}\n{"text": "first prompt"}\n')
  cfg.source, cfg.prompt_field = str(good), 'text'
  assert prompts_lib.load_prompts(cfg, str(tmp_path)) == ['first prompt', 'second prompt']
  assert list((tmp_path / 'data').rglob('*.array_record*'))  # read back through TFDS
  bad = tmp_path / 'bad.jsonl'
  bad.write_text('{"text": "ok"}\n{"text": 3}\n')
  cfg.source = str(bad)
  with pytest.raises(ValueError, match=r'bad.jsonl:2: no string field .text.'):
    prompts_lib.load_prompts(cfg, str(tmp_path))
  bad.write_text('{"text": "ok"}\n{text: broken\n')
  with pytest.raises(ValueError, match=r'bad.jsonl:2: not valid JSON'):
    prompts_lib.load_prompts(cfg, str(tmp_path))
  empty = tmp_path / 'empty.jsonl'
  empty.write_text('\n')
  cfg.source = str(empty)
  with pytest.raises(ValueError, match='has no prompts'):
    prompts_lib.load_prompts(cfg, str(tmp_path))


SHRINK = [  # every size of a shipped config, down to the tiny model and a few prompts
    '--config.data.num_heldout=8', '--config.data.max_prompts=40', '--config.data.prompt_field=text',
    '--config.judge.max_context_tokens=32', '--config.judge.max_response_tokens=16',
    '--config.sft.num_examples=8', '--config.sft.steps=2', '--config.sft.batch_size=8',
    '--config.sft.prompt_length=32', '--config.sft.response_length=16',
    '--config.sft.sampling.max_new_tokens=8',
    '--config.label.num_prompts=16', '--config.label.batch_size=8',
    '--config.label.sampling.max_new_tokens=8',
    '--config.reward_model.steps=2', '--config.reward_model.batch_size=8',
    '--config.reward_model.max_length=48', '--config.reward_model.eval_fraction=0.25',
    '--config.rl.iterations=2', '--config.rl.batch_size=8', '--config.rl.prompt_length=32',
    '--config.rl.sampling.max_new_tokens=8', '--config.eval.num_prompts=8',
    '--config.eval.sampling.max_new_tokens=8', '--config.checkpoint.interval=1']


@pytest.mark.parametrize('config', ['tldr_summarization', 'tldr_summarization:drlaif', 'hh_dialogue'])
def test_each_shipped_config_runs_all_its_stages_on_a_jsonl_of_prompts(tmp_path, tiny_hf_folder,
                                                                        config):
  import importlib
  prompts = tmp_path / 'prompts.jsonl'
  prompts.write_text(''.join(json.dumps({'text': f'{" ".join(tiny.WORDS[i:i + 5])} TL;DR:'}) + '\n'
                             for i in range(40)))
  name, _, arg = config.partition(':')
  cmd = [sys.executable, '-m', 'rlaif_jax.main', f'--config=configs/{name}.py' + (f':{arg}' if arg else ''),
         f'--workdir={tmp_path / "run"}', f'--config.model.source={tiny_hf_folder}',
         f'--config.data.source={prompts}', *SHRINK]
  r = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  stages = importlib.import_module(f'configs.{name}').get_config(arg or None).stages
  summary = json.loads((tmp_path / 'run' / 'summary.json').read_text())
  assert list(summary['stages']) == list(stages)
  assert (tmp_path / 'run' / 'export' / 'model.safetensors').exists()
  rl_rows = metrics.read(str(tmp_path / 'run'), 'rl')
  assert [row['step'] for row in rl_rows] == [1, 2]
  finite_rows(rl_rows, ('reward', 'kl'))


def test_a_default_data_source_that_cannot_be_read_fails_in_seconds(tmp_path, tiny_hf_folder):
  t0 = time.time()
  r = subprocess.run([sys.executable, '-m', 'rlaif_jax.main', '--config=configs/tldr_summarization.py',
                      f'--workdir={tmp_path}', f'--config.model.source={tiny_hf_folder}'], cwd=ROOT,
                     env=_env(), capture_output=True, text=True, timeout=300)
  seconds = time.time() - t0
  assert r.returncode == 2
  (error,) = [line for line in r.stderr.splitlines() if line.startswith('rlaif_jax: error:')]
  assert "data.source='tfds:huggingface:trl_lib__tldr:train' cannot be read here" in error
  assert 'JSONL' in error and len(error) < 500 and 'starting' not in r.stdout
  print(f'failed in {seconds:.1f} s')
