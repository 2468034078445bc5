"""Runs the stages a config names, in order, in one workdir.

Stages and what each leaves in the workdir (a stage whose output is complete skips itself; a stage
killed part way resumes from its last checkpoint):
  generate       generate.jsonl: the policy's responses to config.generate.prompts
  sft            sft/policy (DONE.json last): supervised fine-tuning on demonstrations
                 (config.sft.data: a JSONL file) or on constitutional revisions of the policy's own
                 responses ('revisions'); sft/checkpoints while it runs
  label          label/preferences (TFDS) + label/DONE.json: response pairs from the policy, soft
                 labels from the debiased judge
  reward_model   reward_model/model (reward_stats.json last): the reward model and its statistics
  rl             rl/policy (DONE.json last): PPO / REINFORCE / RLOO against the reward model or the
                 judge; rl/checkpoints while it runs
  eval           eval/eval.json, eval/report.md, eval/*.png: win rate against the reference policy on
                 held-out prompts (both orders), harmless rate, optional judge-human alignment
  export         export/: the policy as a Hugging Face folder (config.json, safetensors, tokenizer)
Every stage appends to metrics.jsonl and TensorBoard files (tensorboard/<stage>) and prints progress
lines with rate and ETA. The policy a stage starts from is the newest of rl/policy, sft/policy and
config.model.source; the reference policy is sft/policy or config.model.source.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from rlaif_jax import checkpoint_hf, checkpoints, data, labeling, metrics, pretrained
from rlaif_jax import judge as judge_lib
from rlaif_jax import preference_dataset, rl, rl_loop, sampling, sft, train
from rlaif_jax import reward_model as rm
from rlaif_jax import sharding as shd

DONE = 'DONE.json'


class Preempted(SystemExit):
  """Raised after SIGTERM once the running stage has saved a checkpoint."""


class Run:
  """What the stages of one run share: config, workdir, mesh, rules, prompts, a SIGTERM flag."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config, self.workdir = config, os.path.abspath(workdir)
    self.mesh = shd.make_mesh(dict(config.mesh))
    self.rules = shd.rules_from_config(config.logical_axis_rules)
    self.key = jax.random.key(config.seed)
    self.terminate = False
    self.skipped: set[str] = set()  # stages found complete in this run
    self._prompts = None

  def path(self, *parts: str) -> str:
    return os.path.join(self.workdir, *parts)

  def stage_key(self, stage: str) -> jax.Array:
    return jax.random.fold_in(self.key, STAGE_ORDER.index(stage))

  # ------------------------------------------------------------------------ models
  def load(self, source: str, scalar_head: bool = False):
    m = self.config.model
    return pretrained.load_model(source or m.source, self.mesh, self.rules, scalar_head=scalar_head,
                                 param_dtype=m.param_dtype, dtype=m.dtype, remat=m.remat)

  def policy_dir(self, reference: bool = False) -> str | None:
    """Where the current (or, with reference=True, the reference) policy's parameters are."""
    for stage in (('sft',) if reference else ('rl', 'sft')):
      if checkpoints.read_marker(self.path(stage, 'policy')) is not None:
        return self.path(stage, 'policy')
    return None

  def policy(self, reference: bool = False, scalar_head: bool = False):
    """(model with the current or reference policy's parameters, tokenizer)."""
    model, tokenizer = self.load(self.config.model.source, scalar_head)
    folder = self.policy_dir(reference)
    if folder is not None:
      params, _ = checkpoints.restore_params(folder, model, self.mesh, what='policy')
      nnx.update(model, params)
    return model, tokenizer

  def judge(self, task: str | None = None) -> judge_lib.Judge:
    j = self.config.judge
    model, tokenizer = self.load(j.source)
    cfg = judge_lib.JudgeConfig(task=task or j.task, preamble=j.preamble, debias=j.debias,
                                chat_template=j.chat_template,
                                max_response_tokens=j.max_response_tokens,
                                max_context_tokens=j.max_context_tokens)
    return judge_lib.Judge(model, tokenizer, self.mesh, cfg, name=j.source or self.config.model.source)

  def constitution(self) -> list[str] | None:
    path = self.config.judge.constitution
    if not path:
      return None
    if not os.path.isabs(path) and not os.path.exists(path):
      path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), path)
    return judge_lib.read_constitution(path)

  # ------------------------------------------------------------------------ data
  def prompts(self) -> tuple[list[str], list[str]]:
    """(train, held-out) prompts."""
    if self._prompts is None:
      d = self.config.data
      self._prompts = data.split(data.load_prompts(d, self.workdir), d.num_heldout, self.config.seed)
    return self._prompts

  def sampling(self, s: ml_collections.ConfigDict) -> sampling.SamplingConfig:
    return sampling.SamplingConfig(max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                                   top_k=s.top_k, top_p=s.top_p)


# ---------------------------------------------------------------------------- the training loop

def resume(run: Run, stage: str, like: Any, batches: Any
           ) -> tuple[checkpoints.Checkpoints, int, Any, dict]:
  """The stage's checkpoints and where to start: (checkpoints, step, state, meta) from its own latest
  checkpoint, else from `checkpoint.restore_from` when that names this stage, else (.., 0, like, {}).
  Puts the data iterator `batches` back where the checkpoint left it."""
  ck = run.config.checkpoint
  ckpt = checkpoints.Checkpoints(run.path(stage, 'checkpoints'), ck.interval, ck.keep, ck.async_save)
  restored = ckpt.restore(like) if ckpt.latest_step() is not None else None
  if restored is None and checkpoints.stage_of(ck.restore_from) == stage:
    restored = checkpoints.restore_from(ck.restore_from, like)
  if restored is None:
    return ckpt, 0, like, {}
  start, state, meta = restored
  batches.set_state(meta['data'])
  print(f'[{stage}] resumed at step {start} from {ckpt.directory}', flush=True)
  return ckpt, start, state, meta


def fit(run: Run, stage: str, step: Callable, state: train.TrainState, items: list, batch_size: int,
        to_batch: Callable[[list], Any], steps: int, seed: int) -> train.TrainState:
  """`steps` train steps over shuffled batches of `items` with checkpoints, exact resume, metrics,
  progress, SIGTERM saving and the non-finite guard. Returns the final state."""
  batches = data.batches(items, batch_size, seed)
  ckpt, start, state, _ = resume(run, stage, state, batches)
  writer = metrics.Writer(run.workdir, stage, resume_step=start)  # drops rows of a killed try
  progress = metrics.Progress(stage, steps, start)
  guard = NonFiniteGuard(run.config.train.max_nonfinite_steps, stage, ckpt)
  try:
    for i in range(start, steps):
      state, m = step(state, to_batch(next(batches)))
      m = {k: float(v) for k, v in jax.device_get(m).items()}
      guard.check(i + 1, m['skipped'])
      writer.write(i + 1, m)
      progress.update(i + 1, {'loss': m.get('loss', float('nan'))})
      ckpt.save(i + 1, state, {'data': batches.get_state()}, force=i + 1 == steps)
      if run.terminate:
        _save_and_exit(ckpt, i + 1, state, {'data': batches.get_state()}, stage)
  finally:
    writer.close()
    ckpt.close()
  return state


class NonFiniteGuard:
  """Counts updates skipped for a non-finite loss or gradient; too many in a row stop the run."""

  def __init__(self, limit: int, stage: str, ckpt: checkpoints.Checkpoints):
    self.limit, self.stage, self.ckpt, self.run = limit, stage, ckpt, 0
    self.total = 0

  def check(self, step: int, skipped: float) -> None:
    self.total += int(skipped)
    self.run = self.run + 1 if skipped else 0
    if self.run > self.limit:
      raise FloatingPointError(
          f'[{self.stage}] {self.run} steps in a row had a non-finite loss or gradient (up to step '
          f'{step}); stopped. The last good checkpoint (step {self.ckpt.latest_step()}) is kept in '
          f'{self.ckpt.directory}. Lower the learning rate or check the data, then run again; raise '
          f'config.train.max_nonfinite_steps to tolerate more.')


def _save_and_exit(ckpt: checkpoints.Checkpoints, step: int, state: Any, meta: dict, stage: str):
  if ckpt.latest_step() != step:
    ckpt.save(step, state, meta, force=True)
  ckpt.wait()
  print(f'[{stage}] SIGTERM: saved the checkpoint of step {step} in {ckpt.directory}; exiting. '
        f'Run the same command again to resume.', flush=True)
  raise Preempted(143)


def _done(run: Run, stage: str, marker: str = DONE) -> dict | None:
  info = checkpoints.read_marker(run.path(stage), marker)
  if info is not None:
    run.skipped.add(stage)
    print(f'[{stage}] complete already ({run.path(stage, marker)}); skipping.', flush=True)
  return info


def _policy_params(model) -> Any:
  """The policy's parameters without a scalar (value) head."""
  params = nnx.state(model, nnx.Param)
  return nnx.State({k: v for k, v in params.items() if not k.startswith('scalar_')})


# ---------------------------------------------------------------------------- stages

def stage_generate(run: Run) -> dict[str, Any]:
  """Sample one response per prompt; writes generate.jsonl and prints prompt -> response."""
  t0 = time.time()
  policy, tokenizer = run.policy()
  g = run.config.generate
  generator = sampling.TextGenerator(policy, tokenizer, run.mesh, g.prompt_buckets)
  responses = generator(list(g.prompts), run.sampling(g), run.stage_key('generate'),
                        chat=g.chat_template)
  path = run.path('generate.jsonl')
  with open(path, 'w') as f:
    for p, r in zip(g.prompts, responses):
      f.write(json.dumps({'prompt': p, 'response': r}) + '\n')
  for p, r in zip(g.prompts, responses):
    print(f'\n>>> {p}\n{r}')
  seconds = time.time() - t0
  print(f'\n[generate] {len(responses)} responses in {seconds:.1f}s (including loading and '
        f'compilation); written to {path}')
  return {'seconds': seconds, 'responses': len(responses)}


def stage_sft(run: Run) -> dict[str, Any]:
  if (info := _done(run, 'sft')) is not None:
    return info
  c = run.config.sft
  model, tokenizer = run.policy()
  train_prompts, _ = run.prompts()
  if c.data == 'revisions':
    prompts, responses = _revisions(run, model, tokenizer, train_prompts[:c.num_examples])
  else:
    rows = [json.loads(line) for line in open(c.data, encoding='utf-8') if line.strip()]
    prompts = [r[c.prompt_field] for r in rows]
    responses = [r[c.response_field] for r in rows]
  batch = lambda idx: sft.encode(tokenizer, [prompts[i] for i in idx], [responses[i] for i in idx],
                                 c.prompt_length, c.response_length)
  optimizer = train.make_optimizer(c.learning_rate, c.steps, c.warmup_steps)
  step = sft.make_train_step(model, optimizer, run.mesh)
  state = fit(run, 'sft', step, step.init(), list(range(len(prompts))), c.batch_size, batch, c.steps,
              run.config.seed)
  nnx.update(model, state.params)
  info = {'examples': len(prompts), 'steps': c.steps}
  checkpoints.save_params(run.path('sft', 'policy'), _policy_params(model), info)
  checkpoints.write_json(run.path('sft', DONE), info)
  return info


def _revisions(run: Run, model, tokenizer, prompts: list[str]) -> tuple[list[str], list[str]]:
  """Constitutional revisions of the policy's own responses (written once to sft/revisions.jsonl)."""
  path = run.path('sft', 'revisions.jsonl')
  if not os.path.exists(path):
    os.makedirs(run.path('sft'), exist_ok=True)
    principles = run.constitution()
    if not principles:
      raise ValueError("sft.data='revisions' needs a constitution: set judge.constitution.")
    generator = sampling.TextGenerator(model, tokenizer, run.mesh)
    settings = run.sampling(run.config.sft.sampling)
    k_resp, k_rev = jax.random.split(run.stage_key('sft'))
    responses = generator(prompts, settings, k_resp)
    records = judge_lib.critique_and_revise(
        generator, prompts, responses,
        judge_lib.sample_principles(principles, len(prompts), run.config.seed), k_rev, settings)
    judge_lib.write_revisions(records, path)
  rows = [json.loads(line) for line in open(path, encoding='utf-8')]
  return [r['prompt'] for r in rows], [r['revision'] for r in rows]


def stage_label(run: Run) -> dict[str, Any]:
  if (info := _done(run, 'label')) is not None:
    return info
  c = run.config.label
  policy, tokenizer = run.policy()
  generator = sampling.TextGenerator(policy, tokenizer, run.mesh)
  train_prompts, _ = run.prompts()
  prompts = train_prompts[:c.num_prompts] if c.num_prompts > 0 else train_prompts
  judge = run.judge()
  t0 = time.time()
  dataset_dir = labeling.label(judge, prompts, run.path('label'), run.stage_key('label'),
                               policy=generator, response_settings=run.sampling(c.sampling),
                               batch_size=c.batch_size, constitution=run.constitution(),
                               seed=run.config.seed)
  rows = preference_dataset.read_chunks(run.path('label', 'label_chunks'))
  live = [r for r in rows if not r['skipped']]
  info = {'dataset': dataset_dir, 'pairs': len(rows), 'skipped': len(rows) - len(live),
          'position_consistency': float(np.mean([r['consistent'] for r in live])) if live else 0.0,
          'mean_confidence': float(np.mean([abs(r['p_a_better'] - 0.5) * 2 for r in live]))
          if live else 0.0, 'seconds': time.time() - t0}
  writer = metrics.Writer(run.workdir, 'label')
  writer.write(len(rows), info)
  writer.close()
  checkpoints.write_json(run.path('label', DONE), info)
  return info


def _pair_tokens(tokenizer, prompts, responses, length: int) -> tuple[np.ndarray, np.ndarray]:
  """Prompt (chat template) + response + eos, left-padded to `length` (long ones keep their end)."""
  eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
  ids = [p + tokenizer.encode(r, add_special_tokens=False) + eos
         for p, r in zip(sampling.encode_texts(tokenizer, prompts, True), responses)]
  pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
  return sampling.left_pad([x[-length:] for x in ids], length, pad)


def stage_reward_model(run: Run) -> dict[str, Any]:
  if (info := _done(run, 'reward_model', os.path.join('model', rm.STATS_FILE))) is not None:
    return info
  if checkpoints.read_marker(run.path('label')) is None:
    raise FileNotFoundError(f'The reward_model stage needs labels: no complete label stage in '
                            f'{run.path("label")}; add "label" to config.stages before it.')
  c = run.config.reward_model
  model, tokenizer = run.load(c.source, scalar_head=True)
  rows = [r for r in preference_dataset.read_chunks(run.path('label', 'label_chunks'))
          if not r['skipped']]
  n_eval = max(1, int(len(rows) * c.eval_fraction))
  if len(rows) - n_eval < c.batch_size:
    raise ValueError(f'{len(rows)} labeled pairs leave fewer than reward_model.batch_size='
                     f'{c.batch_size} for training; label more prompts or lower the batch size.')
  train_rows, eval_rows = rows[:-n_eval], rows[-n_eval:]

  def batch(chunk: list) -> rm.Batch:
    ta, va = _pair_tokens(tokenizer, [r['prompt'] for r in chunk], [r['response_a'] for r in chunk],
                          c.max_length)
    tb, vb = _pair_tokens(tokenizer, [r['prompt'] for r in chunk], [r['response_b'] for r in chunk],
                          c.max_length)
    return rm.Batch(ta, va, tb, vb, np.asarray([r['p_a_better'] for r in chunk], np.float32))

  optimizer = train.make_optimizer(c.learning_rate, c.steps, c.warmup_steps)
  step = rm.make_train_step(model, optimizer, run.mesh, c.micro_batches)
  state = fit(run, 'reward_model', step, step.init(), train_rows, c.batch_size, batch, c.steps,
              run.config.seed)
  reward = rm.make_reward_fn(model)
  # held-out batches filled to the mesh's batch multiple with undecided (p = 0.5) rows, which the
  # accuracy leaves out
  multiple = shd.batch_shards(run.mesh, model.cfg.logical_axis_rules)
  filler = dict(eval_rows[0], p_a_better=0.5)
  held_out = [batch(chunk + [filler] * (-len(chunk) % multiple))
              for chunk in (eval_rows[i:i + c.batch_size]
                            for i in range(0, len(eval_rows), c.batch_size))]
  report = rm.evaluate(reward, state.params, held_out)
  train_rewards = [np.asarray(reward(state.params, b.tokens_a, b.valid_a))
                   for b in (batch(train_rows[i:i + c.batch_size])
                             for i in range(0, len(train_rows) - c.batch_size + 1, c.batch_size))]
  stats = rm.reward_stats(np.concatenate(train_rewards))
  info = {**report, 'train_pairs': len(train_rows), 'eval_pairs': len(eval_rows), 'steps': c.steps}
  rm.save(run.path('reward_model', 'model'), state.params, stats, info)
  print(f'[reward_model] held-out accuracy vs AI labels {report["accuracy_ai"]:.3f} on '
        f'{report["pairs_ai"]} pairs', flush=True)
  return {**stats._asdict(), **info}


def rl_config(c: ml_collections.ConfigDict) -> rl.RLConfig:
  """The RLConfig in config.rl (its other fields are the loop's: iterations, batch size...)."""
  return rl.RLConfig(**{f.name: c[f.name] for f in dataclasses.fields(rl.RLConfig)})


def stage_rl(run: Run) -> dict[str, Any]:
  if (info := _done(run, 'rl')) is not None:
    return info
  c = run.config.rl
  cfg = rl_config(c)
  shared = cfg.algorithm == 'ppo' and cfg.value_model == 'shared'
  policy, tokenizer = run.policy(scalar_head=shared)
  # the reference parameters in the policy's own layout (with its head when the value head is shared)
  reference = jax.tree.map(jnp.copy, nnx.state(run.policy(reference=True, scalar_head=shared)[0]))
  scorer_args = {}
  value_model = None
  if cfg.reward == 'reward_model' or cfg.value_model == 'separate':
    rm_model, _ = run.load(run.config.reward_model.source, scalar_head=True)
    rm_params, stats = rm.restore(run.path('reward_model', 'model'), rm_model, run.mesh)
    nnx.update(rm_model, rm_params)
    scorer_args['reward_model'] = (rm_model, rm_params, run.mesh, stats)
    if cfg.value_model == 'separate':  # initialised from the reward model, as in TRL
      value_model, _ = run.load(run.config.reward_model.source, scalar_head=True)
      nnx.update(value_model, rm_params)
  if cfg.reward == 'judge':
    scorer_args.update(judge=run.judge(), tokenizer=tokenizer)
  eos = tokenizer.eos_token_id
  settings = dataclasses.replace(run.sampling(c.sampling), stop_tokens=() if eos is None else (eos,))
  optimizer = train.make_optimizer(c.learning_rate, c.iterations * c.epochs * c.minibatches,
                                   c.warmup_steps)
  loop = rl_loop.RLLoop(policy, run.mesh, cfg, settings, optimizer,
                        rl_loop.make_scorer(cfg, **scorer_args), value_model,
                        tokenizer.pad_token_id or 0)
  state = loop.init()
  key = run.stage_key('rl')
  train_prompts, _ = run.prompts()
  batches = data.batches(train_prompts, c.batch_size, run.config.seed)
  ckpt, start, tree, meta = resume(run, 'rl', {'train': state, 'key': jax.random.key_data(key)},
                                   batches)
  state, key = tree['train'], jax.random.wrap_key_data(tree['key'])
  kl_coef = meta.get('kl_coef', cfg.kl_coef)
  writer = metrics.Writer(run.workdir, 'rl', resume_step=start)  # drops rows of a killed try
  progress = metrics.Progress('rl', c.iterations, start, unit='iteration', every=0)
  guard = NonFiniteGuard(run.config.train.max_nonfinite_steps, 'rl', ckpt)
  try:
    for i in range(start, c.iterations):
      prompts = rl_loop.encode_prompts(tokenizer, next(batches), c.prompt_length)
      state, kl_coef, m = loop.iteration(state, reference, kl_coef, prompts,
                                         jax.random.fold_in(key, i))
      guard.check(i + 1, m['skipped'])
      writer.write(i + 1, m)
      progress.update(i + 1, {k: m[k] for k in ('reward', 'kl', 'entropy')})
      meta = {'kl_coef': kl_coef, 'data': batches.get_state()}
      tree = {'train': state, 'key': jax.random.key_data(key)}
      ckpt.save(i + 1, tree, meta, force=i + 1 == c.iterations)
      if run.terminate:
        _save_and_exit(ckpt, i + 1, tree, meta, 'rl')
  finally:
    writer.close()
    ckpt.close()
  nnx.update(policy, state.params['policy'])
  info = {'iterations': c.iterations, 'kl_coef': kl_coef, **{
      k: float(np.mean([r[k] for r in metrics.read(run.workdir, 'rl')[-3:]]))
      for k in ('reward', 'kl', 'reward_raw')}}
  checkpoints.save_params(run.path('rl', 'policy'), _policy_params(policy), info)
  checkpoints.write_json(run.path('rl', DONE), info)
  return info


def stage_eval(run: Run) -> dict[str, Any]:
  from rlaif_jax import report
  if (info := _done(run, 'eval', 'eval.json')) is not None:
    return info
  c = run.config.eval
  _, held_out = run.prompts()
  prompts = held_out[:c.num_prompts] if c.num_prompts > 0 else held_out
  if not prompts:
    raise ValueError('The eval stage needs held-out prompts: set data.num_heldout > 0.')
  settings = run.sampling(c.sampling)
  k_policy, k_ref = jax.random.split(run.stage_key('eval'))
  responses = {}
  for name, reference, key in (('policy', False, k_policy), ('reference', True, k_ref)):
    model, tokenizer = run.policy(reference=reference)
    responses[name] = sampling.TextGenerator(model, tokenizer, run.mesh)(prompts, settings, key)
  judge = run.judge()
  out = {'prompts': len(prompts), 'policy_from': run.policy_dir() or run.config.model.source,
         'reference_from': run.policy_dir(reference=True) or run.config.model.source}
  pref = judge.pairwise(prompts, responses['policy'], responses['reference'])
  out.update(report.win_rate(pref.p_a_better, pref.consistent))
  harmless = run.judge(task='harmless')
  for name in ('policy', 'reference'):
    rewards, _ = harmless.direct_reward(prompts, responses[name])
    out[f'harmless_rate_{name}'] = float(np.mean(rewards > 0))
  if c.human_pairs:
    pairs = judge_lib.read_human_pairs(c.human_pairs, limit=c.human_pairs_limit or None)
    out['judge_human_alignment'] = judge_lib.alignment(judge, pairs, progress=False)
  os.makedirs(run.path('eval'), exist_ok=True)
  with open(run.path('eval', 'samples.jsonl'), 'w') as f:
    for p, a, b, q in zip(prompts, responses['policy'], responses['reference'], pref.p_a_better):
      f.write(json.dumps({'prompt': p, 'policy': a, 'reference': b, 'p_policy_better': float(q)})
              + '\n')
  report.write(run.workdir, out)
  checkpoints.write_json(run.path('eval', 'eval.json'), out)
  print(f'[eval] win rate vs reference {out["win_rate"]:.3f} (95% CI {out["win_rate_ci95"][0]:.3f}-'
        f'{out["win_rate_ci95"][1]:.3f}) on {len(prompts)} held-out prompts; report in '
        f'{run.path("eval", "report.md")}', flush=True)
  return out


def stage_export(run: Run) -> dict[str, Any]:
  if (info := _done(run, 'export')) is not None:
    return info
  model, tokenizer = run.policy()
  folder = run.path('export')
  checkpoint_hf.export_folder(nnx.state(model), model.cfg, folder, tokenizer)
  info = {'from': run.policy_dir() or run.config.model.source, 'folder': folder}
  checkpoints.write_json(os.path.join(folder, DONE), info)
  print(f'[export] the policy is a Hugging Face folder now: {folder}', flush=True)
  return info


STAGES: dict[str, Callable[[Run], dict[str, Any]]] = {
    'generate': stage_generate, 'sft': stage_sft, 'label': stage_label,
    'reward_model': stage_reward_model, 'rl': stage_rl, 'eval': stage_eval, 'export': stage_export,
}
STAGE_ORDER = tuple(STAGES)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, dict[str, Any]]:
  """Run config.stages in order; returns each stage's summary. SIGTERM makes the running stage save
  a checkpoint and exit (status 143); the same command resumes."""
  unknown = [s for s in config.stages if s not in STAGES]
  if unknown:
    raise ValueError(f'Unknown stage(s) {unknown} in config.stages; stages are {list(STAGES)}.')
  if config.checkpoint.restore_from:
    checkpoints.stage_of(config.checkpoint.restore_from, check=True)
  os.makedirs(workdir, exist_ok=True)
  r = Run(config, workdir)

  def on_sigterm(signum, frame):
    r.terminate = True
    print('SIGTERM received: saving a checkpoint after the current step.', flush=True)

  previous = signal.signal(signal.SIGTERM, on_sigterm)
  summaries, seconds = {}, {}
  before = checkpoints.read_marker(workdir, 'summary.json') or {'seconds': {}}
  try:
    for stage in config.stages:
      print(f'[{stage}] starting', flush=True)
      t0 = time.time()
      summaries[stage] = STAGES[stage](r)
      seconds[stage] = time.time() - t0
      if stage in r.skipped:  # the time it took when it ran (kept in summary.json or its marker)
        seconds[stage] = before['seconds'].get(stage, summaries[stage].get('seconds', seconds[stage]))
      else:
        print(f'[{stage}] done in {seconds[stage]:.0f}s', flush=True)
  finally:
    signal.signal(signal.SIGTERM, previous)
  checkpoints.write_json(os.path.join(workdir, 'summary.json'),
                         {'stages': summaries, 'seconds': seconds})
  if jax.process_index() == 0:
    from rlaif_jax import report
    print('\n' + report.summary_table(r.workdir, summaries, seconds), flush=True)
  return summaries
