"""LoRA adapters: few trained parameters, optimizer moments only for them, the reference as the base
weights with adapters off, the merged export equal to our adapted model in transformers, and RL
with LoRA learning a programmatic reward."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from rlaif_jax.infra import sharding as shd
from rlaif_jax.infra.errors import UserError
from rlaif_jax.models import hf_checkpoint, loading, lora
from rlaif_jax.models.config import ModelConfig
from rlaif_jax.rl import config as rl_config
from rlaif_jax.rl import update as rl_update
from tests import helpers
from tests.test_grpo import VARIANTS
from tests.test_rl import CFG, random_rollout, run_loop

SMOLLM2 = ModelConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
                      num_heads=9, num_kv_heads=3, head_dim=64, tie_word_embeddings=True)


@pytest.mark.parametrize('scan', [False, True])
def test_adapters_are_few_and_start_as_the_base_model(scan):
  abstract = loading.abstract_model(SMOLLM2.replace(lora_rank=8, scan_layers=scan))
  adapters, total = lora.count(nnx.state(abstract, nnx.Param))
  assert 0 < adapters < 0.05 * total, (adapters, total)  # 0.9% at rank 8 on every projection
  mesh = shd.make_mesh({'data': 1}, jax.devices()[:1])
  base = loading.random_model(CFG.replace(scan_layers=scan), 0, mesh)
  adapted = loading.place(CFG.replace(scan_layers=scan, lora_rank=4),
                          hf_checkpoint.host_arrays(base), mesh)
  tokens, valid = helpers.padded_batch(32)
  np.testing.assert_array_equal(helpers.our_log_probs(adapted, tokens, valid),
                                helpers.our_log_probs(base, tokens, valid))  # B = 0 at the start
  with pytest.raises(UserError, match='LoRA needs'):
    CFG.replace(lora_rank=4, lora_targets=('qkv',))


def randomize_adapters(model, seed=0):
  """Non-zero B (and A) so the adapters change the model."""
  state = nnx.state(model, nnx.Param)
  rng = np.random.default_rng(seed)
  def one(path, v):
    name = shd._path_name(path)
    if lora.is_adapter_name(name):
      return v.replace(jnp.asarray(rng.normal(0, 0.2, v.shape), v.get_value().dtype))
    return v
  nnx.update(model, jax.tree_util.tree_map_with_path(one, state,
                                                     is_leaf=lambda x: isinstance(x, nnx.Variable)))
  return model


@pytest.mark.parametrize('scan', [False, True])
def test_merged_export_equals_the_adapted_model_in_transformers(tmp_path, tiny_hf_folder, scan):
  model, tok = loading.load_model(tiny_hf_folder, lora_rank=4, lora_alpha=8.0, scan_layers=scan)
  base, _ = loading.load_model(tiny_hf_folder)
  randomize_adapters(model)
  tokens, valid = helpers.padded_batch(len(tok), 4)
  ours = helpers.our_log_probs(model, tokens, valid)
  assert helpers.masked_max_diff(ours, helpers.our_log_probs(base, tokens, valid), valid) > 0.05
  out = str(tmp_path / 'merged')
  hf_checkpoint.export_folder(nnx.state(model), model.cfg, out, tok)
  theirs = helpers.torch_log_probs(out, tokens, valid)
  assert helpers.masked_max_diff(ours, theirs, valid) < 1e-4
  reloaded, _ = loading.load_model(out)  # a plain checkpoint: no adapters left
  assert not reloaded.cfg.lora_rank
  assert helpers.masked_max_diff(helpers.our_log_probs(reloaded, tokens, valid), ours, valid) < 1e-5


def test_only_adapters_train_and_carry_optimizer_moments():
  weights, rollout = random_rollout(2, 0, rows=8, new_tokens=6)
  mesh = shd.make_mesh({'data': 1}, jax.devices()[:1])
  model = loading.place(CFG.replace(lora_rank=4), weights, mesh)
  update = rl_update.make_update(model, optax.adam(0.05), mesh, rl_config.RLConfig('ppo'))
  state = update.init()
  moments = sum(x.size for x in jax.tree.leaves(state.opt_state))
  adapters, total = lora.count(state.params['policy'])
  head = CFG.hidden_size + 1  # PPO's shared value head trains too (the base never had it)
  assert moments <= 2 * (adapters + head) + 16 < total  # Adam's two moments, and counts
  before = hf_checkpoint.host_arrays(state.params['policy'])
  state, _ = update(state, rollout, 0.05, jax.random.key(1))
  after = hf_checkpoint.host_arrays(state.params['policy'])
  for name in before:
    moved = not np.array_equal(before[name], after[name])
    # the value head is not an adapter but has no base to keep: PPO's shared head trains
    assert moved == lora.trains(name), name


def test_grpo_with_lora_learns_against_its_own_base_as_reference():
  cfg = dataclasses.replace(VARIANTS['dapo'], kl_coef=0.02)
  snapshots = []
  history, loop = run_loop(cfg, iterations=25, model_cfg=CFG.replace(lora_rank=8, lora_alpha=32.0,
                                                                     scalar_head=False),
                           own_reference=True,
                           on_state=lambda s: snapshots.append(hf_checkpoint.host_arrays(
                               s.params['policy'])))
  start = np.mean([h['score'] for h in history[:3]])
  end = np.mean([h['score'] for h in history[-3:]])
  assert end > start + 0.3, (start, end)
  assert abs(history[0]['kl']) < 1e-5  # the first rollout's policy is its reference (B = 0)
  assert history[-1]['kl'] > 1.0
  first, last = snapshots[0], snapshots[-1]
  for name in first:
    assert np.array_equal(first[name], last[name]) != lora.is_adapter_name(name), name


def test_lora_policy_through_rl_and_export_in_the_pipeline(tmp_path, tiny_hf_folder):
  """model.lora_rank in a run: rl (d-RLAIF, the policy's base as reference), then export of the
  merged policy, which transformers loads and which equals the adapted policy, and of the adapters
  as a PEFT folder, which peft puts on the base model with the same result."""
  import json
  from configs import tiny
  from rlaif_jax.pipeline import context, runner
  config = tiny.get_config()
  config.model.source = tiny_hf_folder
  config.model.lora_rank, config.model.lora_alpha = 4, 16.0
  config.stages = ('rl', 'export')
  config.rl.reward, config.rl.iterations = 'judge', 3
  runner.run_stages(config, str(tmp_path))
  rows = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  kls = [r['kl'] for r in rows if r['stage'] == 'rl']
  assert len(kls) == 3 and abs(kls[0]) < 1e-5  # iteration 1 samples from the reference itself
  policy, tok = context.RunContext(config, str(tmp_path)).policy()
  assert policy.cfg.lora_rank == 4
  names = hf_checkpoint.host_arrays(policy)
  assert any(lora.is_adapter_name(n) and n.endswith('_lora_b') and np.abs(names[n]).max() > 0
             for n in names)  # the adapters trained
  tokens, valid = helpers.padded_batch(len(tok), 5)
  ours = helpers.our_log_probs(policy, tokens, valid)
  exported = helpers.torch_log_probs(str(tmp_path / 'export'), tokens, valid)
  assert helpers.masked_max_diff(ours, exported, valid) < 1e-4
  # the adapters alone as a PEFT folder: peft puts them on the base model, with the same result
  peft = pytest.importorskip('peft')
  config = json.load(open(tmp_path / 'export' / 'adapter' / 'adapter_config.json'))
  assert config['r'] == 4 and config['base_model_name_or_path'] == tiny_hf_folder
  adapted = peft.PeftModel.from_pretrained(helpers.torch_model(tiny_hf_folder),
                                           str(tmp_path / 'export' / 'adapter'))
  assert helpers.masked_max_diff(ours, helpers.torch_log_probs(adapted, tokens, valid), valid) < 1e-4
  base = helpers.torch_log_probs(tiny_hf_folder, tokens, valid)
  assert helpers.masked_max_diff(ours, base, valid) > 1e-3  # the adapters change the model


def _saved_names(directory):
  """Parameter names in an Orbax item (a train-state checkpoint or a finished policy)."""
  import orbax.checkpoint as ocp
  tree = ocp.StandardCheckpointer().metadata(directory).item_metadata.tree  # None: not saved
  return [jax.tree_util.keystr(p, simple=True, separator='/')
          for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def test_lora_checkpoints_hold_adapters_alone_and_resume_exactly(tmp_path, tiny_hf_folder,
                                                                 monkeypatch):
  """sft then GRPO with LoRA: every checkpoint and finished policy holds the adapters (and their
  optimizer state) without the base weights; a run stopped after RL iteration 2 resumes from that
  checkpoint and ends with the same metrics and adapters as a straight run; export still merges."""
  import json
  import pytest
  from configs import tiny
  from rlaif_jax.pipeline import context, runner

  def config():
    c = tiny.get_config()
    c.model.source = tiny_hf_folder
    c.model.lora_rank, c.model.lora_alpha = 2, 16.0
    c.stages = ('sft', 'rl', 'export')
    c.rl.reward, c.rl.algorithm, c.rl.iterations = 'judge', 'grpo', 4
    c.rl.batch_size, c.rl.samples_per_prompt = c.rl.batch_size // 2, 2
    c.checkpoint.interval = 2
    return c

  straight, stopped = tmp_path / 'straight', tmp_path / 'stopped'
  runner.run_stages(config(), str(straight))
  calls = []

  def stop_after_two(self):  # a SIGTERM after RL iteration 2 (sft's 4 steps ask first)
    calls.append(1)
    return len(calls) == 4 + 2
  monkeypatch.setattr(context.RunContext, 'preempted', stop_after_two)
  with pytest.raises(SystemExit):
    runner.run_stages(config(), str(stopped))
  monkeypatch.undo()
  assert max(map(int, os.listdir(stopped / 'rl' / 'checkpoints'))) == 2
  runner.run_stages(config(), str(stopped))

  rows = lambda w: helpers.metric_rows(w, 'rl')
  assert rows(stopped) == rows(straight) and len(rows(straight)) == 4

  for directory in (stopped / 'sft' / 'policy' / 'params', stopped / 'rl' / 'policy' / 'params',
                    straight / 'rl' / 'checkpoints' / '4' / 'state'):
    names = _saved_names(directory)
    assert any(lora.is_adapter_name(n) for n in names), directory
    # no base weight is saved: beside the adapters only optimizer counters and the PRNG key
    assert all(lora.is_adapter_name(n) or 'count' in n or n.startswith(('key', 'train/step'))
               for n in names), (directory, names)
  info = json.load(open(stopped / 'rl' / 'policy' / 'DONE.json'))
  assert info['lora_base'] == ''  # the adapters sit on config.model.source's weights
  (policy, tok), (other, _) = (context.RunContext(config(), str(w)).policy() for w in (stopped, straight))
  a, b = hf_checkpoint.host_arrays(other), hf_checkpoint.host_arrays(policy)
  for name in a:
    np.testing.assert_array_equal(b[name], a[name], err_msg=name)
  assert any(np.abs(a[n]).max() > 0 for n in a if n.endswith('_lora_b'))
  tokens, valid = helpers.padded_batch(len(tok), 5)
  exported = helpers.torch_log_probs(str(stopped / 'export'), tokens, valid)
  assert helpers.masked_max_diff(helpers.our_log_probs(policy, tokens, valid), exported, valid) < 1e-4


def test_lora_rl_on_a_policy_fine_tuned_without_adapters(tmp_path, tiny_hf_folder):
  """sft without LoRA, then rl with it in the same workdir: the adapters start fresh on the sft
  weights (A random, B zero: not all-zero factors, which could never move), train, and the finished
  policy names sft/policy as its base; reloaded, its base weights are sft's exactly."""
  import json
  from configs import tiny
  from rlaif_jax.pipeline import context, runner
  config = tiny.get_config()
  config.model.source = tiny_hf_folder
  config.stages = ('sft',)
  runner.run_stages(config, str(tmp_path))
  sft = hf_checkpoint.host_arrays(context.RunContext(config, str(tmp_path)).policy()[0])
  config.model.lora_rank, config.stages = 4, ('rl',)
  config.rl.reward, config.rl.iterations = 'judge', 2
  runner.run_stages(config, str(tmp_path))
  assert json.load(open(tmp_path / 'rl' / 'policy' / 'DONE.json'))['lora_base'] == 'sft/policy'
  policy = hf_checkpoint.host_arrays(context.RunContext(config, str(tmp_path)).policy()[0])
  for name, value in sft.items():
    np.testing.assert_array_equal(policy[name], value, err_msg=name)
  adapters = [n for n in policy if lora.is_adapter_name(n)]
  assert adapters and all(np.abs(policy[n]).max() > 0 for n in adapters)  # A fresh, B trained
