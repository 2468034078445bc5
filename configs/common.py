"""Pieces every config shares: the device mesh and the logical-axis rules table."""

import ml_collections

from rlaif_jax.infra import axis_rules


def mesh(data: int = -1, fsdp: int = 1, tensor: int = 1) -> ml_collections.ConfigDict:
  """Mesh axes; -1 on one axis takes the remaining devices. data x fsdp x tensor = device count."""
  return ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor))


def logical_axis_rules() -> list:
  """Logical name -> mesh axes (None = replicated), a copy of `rlaif_jax.infra.axis_rules.DEFAULT_RULES`:
  batch -> (data, fsdp); embed -> fsdp (FSDP); vocab, heads, kv_heads, mlp -> tensor (tensor
  parallelism); length, head_dim, norm -> replicated; act_* are the activations' names. Edit the copy
  in a config (or on the command line) to change a layout; a name without a rule is an error, never
  silently replicated."""
  return [list(rule) for rule in axis_rules.DEFAULT_RULES]


def sampling(max_new_tokens: int = 64, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0) -> ml_collections.ConfigDict:
  """How a stage samples: new tokens, temperature (0 = greedy), top-k (0 = off), top-p (1 = off),
  decode steps between stop tests (decode_chunk; 0 = by platform: 1 on CPU, 8 elsewhere)."""
  return ml_collections.ConfigDict(dict(max_new_tokens=max_new_tokens, temperature=temperature,
                                        top_k=top_k, top_p=top_p, decode_chunk=0))


def pipeline(model_source: str) -> ml_collections.ConfigDict:
  """Every field the pipeline reads, with defaults; configs change what differs. See
  `rlaif_jax/pipeline/runner.py` for what each stage does and leaves in the workdir."""
  c = ml_collections.ConfigDict()
  c.stages = ('label', 'reward_model', 'rl', 'eval', 'export')  # run in this order
  c.seed = 0  # every PRNG key and shuffle of the run derives from this
  # The principle's programmatic ground truth, when it has one: a feedback/checks.py name or
  # 'package.module:function' of (prompt, response) -> score. validate measures the judge against
  # it, eval reports the policy's checked effect, label.human='check' has it stand in for annotators.
  c.check = ''
  # label sources to compare (judge, human, hybrid): the stages run once per source in
  # WORKDIR/<source>, then WORKDIR/compare.md (see pipeline/compare.py); () = one ordinary run
  c.compare = ()

  c.model = ml_collections.ConfigDict()
  c.model.source = model_source  # 'smollm2' (embedded), a .gguf file, or a Hugging Face folder
  # Mixed precision: trained models (policy, reward and value models) keep float32 master parameters
  # and optimizer state and compute in `dtype`; frozen ones (the reference policy, the reward model
  # during RL) are stored in `frozen_param_dtype` ('' = param_dtype).
  c.model.param_dtype = 'float32'  # float32 (bfloat16 only for runs that train nothing)
  c.model.dtype = 'float32'  # float32 | bfloat16: matmul/activation dtype
  c.model.frozen_param_dtype = ''  # '' | float32 | bfloat16
  c.model.remat = 'none'  # none | dots | full: what each block keeps for the backward pass
  # Attention of the full-sequence passes (training forward, prefill): auto = by backend (CPU: the
  # dense XLA path; GPU: jax.nn.dot_product_attention, cuDNN flash; TPU: Pallas splash attention),
  # or xla | dot_product | splash (models/attention.py). Decoding keeps the dense path.
  c.model.attention = 'auto'
  # Blocks stacked [L, ...] and run by one lax.scan: compiled once whatever the depth (same numbers,
  # same HF import/export); False = a Python loop over the blocks.
  c.model.scan_layers = True
  # Rows per chunk of the LM-head log-probs (PPO/RL scoring): the [rows, vocab] float32 logits are
  # never all alive, in the forward or the backward pass; 0 = as many rows as keep a chunk within
  # 2^24 logits (64 MiB float32).
  c.model.logit_chunk_rows = 0
  # LoRA on the policy (sft, dpo, rl): only adapters train and are updated by the optimizer; RL's
  # reference is the same weights with the adapters off (no second copy) unless an sft stage ran;
  # export merges them. Every policy stage of a workdir uses the same setting.
  c.model.lora_rank = 0  # 0 = off
  c.model.lora_alpha = 16.0
  c.model.lora_targets = ('q', 'k', 'v', 'o', 'gate', 'up', 'down')
  # The architecture as Hugging Face config.json fields (vocab_size, hidden_size, ...), for planning
  # without the checkpoint (python -m rlaif_jax.plan); empty = read it from model.source.
  c.model.architecture = ml_collections.ConfigDict()

  c.mesh = mesh(data=-1)
  c.logical_axis_rules = logical_axis_rules()
  c.distributed = 'auto'  # auto | always | never: jax.distributed.initialize (rlaif_jax/infra/distributed.py)

  c.data = ml_collections.ConfigDict()
  c.data.source = 'inline'  # inline | chatterbot | /path/prompts.jsonl | tfds:NAME[:SPLIT]
  c.data.prompts = ()  # for source=inline
  c.data.prompt_field = 'prompt'  # the JSONL / TFDS field holding the prompt
  c.data.tfds_data_dir = ''  # where TFDS datasets are prepared ('' = TFDS's default)
  c.data.max_prompts = 0  # 0 = all
  c.data.num_heldout = 8  # prompts kept out of training, for evaluation

  c.judge = ml_collections.ConfigDict()
  c.judge.source = ''  # '' = model.source
  c.judge.architecture = ml_collections.ConfigDict()  # for planning: config.json fields ('' = source's)
  c.judge.task = 'helpful'  # summarization | helpful | harmless
  c.judge.preamble = 'base'  # base | detailed
  c.judge.debias = True  # score both orders and average
  c.judge.chat_template = True
  c.judge.max_response_tokens = 256
  c.judge.max_context_tokens = 512
  c.judge.share_prefix = True  # prefill the requests' common beginning once per batch (fewer token slots)
  c.judge.constitution = ''  # a principles file (one per line), e.g. configs/constitutions/harmless.txt
  c.judge.param_dtype = ''  # how the (frozen) judge is stored; '' = model.frozen_param_dtype
  c.judge.dtype = ''  # the judge's compute dtype; '' = model.dtype

  c.sft = ml_collections.ConfigDict()
  c.sft.data = 'revisions'  # a JSONL of demonstrations, or 'revisions' (constitutional revisions)
  c.sft.prompt_field = 'prompt'
  c.sft.response_field = 'response'
  c.sft.num_examples = 64  # prompts revised when data='revisions'
  c.sft.steps = 50
  c.sft.batch_size = 8
  c.sft.learning_rate = 1e-5
  c.sft.warmup_steps = 5
  c.sft.prompt_length = 128
  c.sft.response_length = 128
  c.sft.sampling = sampling(128, temperature=0.7)  # responses, critiques and revisions

  c.label = ml_collections.ConfigDict()
  c.label.num_prompts = 0  # train prompts labeled (two sampled responses each); 0 = all
  c.label.batch_size = 8
  c.label.sampling = sampling(64, temperature=1.0)
  c.label.question = ''  # pointwise judge labels: a yes/no question about one response ('' = pairwise)
  c.label.pointwise_scale = 1.0  # pointwise: P(A better) = sigmoid((score A - score B) / scale)
  c.label.source = 'judge'  # judge | human | hybrid (the pairs the judge is least sure of: label.human)
  # human labels: a JSONL of {prompt, response_a, response_b, preference: "a"|"b"|"tie"|P(A better)},
  # or 'check' (config.check stands in for human annotators; the report says so)
  c.label.human = ''
  c.label.human_budget = 0  # hybrid: the pairs that get a human label (the judge's least sure)
  c.label.review_size = 0  # > 0: label/review_queue.jsonl, the AI labels most in doubt, to correct

  c.reward_model = ml_collections.ConfigDict()
  c.reward_model.source = ''  # '' = model.source (the backbone gets a scalar head)
  c.reward_model.architecture = ml_collections.ConfigDict()  # for planning, as model.architecture
  c.reward_model.steps = 100
  c.reward_model.batch_size = 8
  c.reward_model.learning_rate = 1e-5
  c.reward_model.warmup_steps = 10
  c.reward_model.max_length = 256  # prompt + response tokens (longer pairs keep their end)
  c.reward_model.eval_fraction = 0.1  # labeled pairs held out for accuracy
  c.reward_model.micro_batches = 1  # gradient accumulation: slices of each batch, one at a time

  # dpo: the policy trained directly on the labels (instead of, or before, reward_model + rl)
  c.dpo = ml_collections.ConfigDict()
  c.dpo.loss = 'sigmoid'  # sigmoid (DPO) | ipo
  c.dpo.labels = 'soft'  # soft: the judge's probability as the target | hard: the side it prefers
  c.dpo.label_smoothing = 0.0  # hard labels -> {e, 1 - e} (conservative DPO)
  c.dpo.beta = 0.1
  c.dpo.steps = 100
  c.dpo.batch_size = 8
  c.dpo.micro_batches = 1
  c.dpo.learning_rate = 1e-6
  c.dpo.warmup_steps = 10
  c.dpo.prompt_length = 128  # a longer prompt loses the start of its user text
  c.dpo.response_length = 128  # each response, eos included
  c.dpo.eval_fraction = 0.1  # labeled pairs held out for accuracy

  c.rl = ml_collections.ConfigDict()
  c.rl.algorithm = 'ppo'  # ppo | reinforce | rloo | grpo (GRPO, Dr. GRPO, DAPO, GSPO: see below) |
  #                         online_dpo
  # The reward: reward_model (RLAIF) | judge (d-RLAIF: the judge's 1-10 score) | judge_yes_no (the
  # judge's log P(Yes) - log P(No) of rl.question) | check:NAME (a feedback/checks.py check) |
  # package.module:function ((prompt, response) -> float, as TRL's reward_funcs)
  c.rl.reward = 'reward_model'
  # or a weighted sum of such terms, e.g. (('judge_yes_no', 1.0), ('check:brevity', 0.05)); each
  # term is logged per iteration as reward/NAME (and config.check, when set, as a monitor)
  c.rl.rewards = ()
  c.rl.question = ''  # judge_yes_no: a yes/no question about one response
  # online_dpo (samples_per_prompt=2): each pair labeled, then DPO steps on it
  c.rl.preference = 'scores'  # scores: s((score_a - score_b) / temperature) | pairwise: the judge's
  c.rl.preference_temperature = 1.0
  c.rl.dpo_loss = 'sigmoid'  # sigmoid (DPO) | ipo
  c.rl.dpo_labels = 'soft'  # soft | hard
  c.rl.dpo_beta = 0.1
  c.rl.value_model = 'shared'  # shared | separate (PPO only)
  c.rl.iterations = 20
  c.rl.batch_size = 8  # prompts per iteration (each sampled samples_per_prompt times)
  c.rl.samples_per_prompt = 1
  c.rl.epochs = 2
  c.rl.minibatches = 2
  c.rl.micro_batches = 1  # gradient accumulation within each minibatch (slices one at a time)
  c.rl.learning_rate = 1e-6
  c.rl.warmup_steps = 0
  c.rl.clip_eps = 0.2
  c.rl.clip_eps_low = 0.0  # 0 = clip_eps; the ratio is clipped to [1 - low, 1 + high]
  c.rl.clip_eps_high = 0.0  # 0 = clip_eps; DAPO's clip-higher: 0.28
  # token_mean (DAPO) | sequence_mean (GRPO's paper) | token_sum (Dr. GRPO: / rows x max_new_tokens)
  # | '' (sequence_mean with importance_ratio='sequence', the only one GSPO takes; else token_mean)
  c.rl.loss_aggregation = ''
  c.rl.importance_ratio = 'token'  # token | sequence (GSPO; with clip_eps_low/high ~ 3e-4 / 4e-4)
  c.rl.scale_rewards = 'group'  # grpo: group | batch | none (Dr. GRPO)
  c.rl.value_clip = 0.2
  c.rl.vf_coef = 0.1
  c.rl.entropy_coef = 0.0
  c.rl.gamma = 1.0
  c.rl.lam = 0.95
  # k1 | k2 | k3 | abs | '' (k3 in the loss, k1 in the reward; k1 in the loss is refused: its
  # expected gradient on-policy is zero)
  c.rl.kl_estimator = ''
  # reward (a per-token penalty) | loss (a loss term) | '' (the loss for grpo, as its paper; the
  # reward for the others)
  c.rl.kl_in = ''
  c.rl.kl_coef = 0.05
  c.rl.kl_target = 0.0  # > 0: adaptive KL controller
  c.rl.kl_horizon = 10000.0
  c.rl.whiten_advantages = True
  c.rl.missing_eos_penalty = 0.0
  # DAPO (rl/dynamic_sampling.py): drop groups whose samples all scored the same, refill the batch
  # from further prompt batches (at most max_sampling_rounds batches an iteration)
  c.rl.dynamic_sampling = False
  c.rl.max_sampling_rounds = 3
  c.rl.overlong_buffer = 0  # > 0: DAPO's soft overlong penalty over the budget's last tokens
  c.rl.overlong_penalty = 1.0  # the penalty at max_new_tokens
  c.rl.prompt_length = 128  # prompts are left-padded (or cut at the front) to this
  c.rl.sampling = sampling(64, temperature=0.7)

  c.eval = ml_collections.ConfigDict()
  c.eval.num_prompts = 0  # held-out prompts evaluated; 0 = all
  c.eval.sampling = sampling(64, temperature=0.0)
  # > 0: the checked effect also on this many sampled answers per held-out prompt, at rl.sampling's
  # temperature (the headline then; a rare property gives a greedy interval of 0-0)
  c.eval.samples_per_prompt = 0
  # what the policy is compared with: 'reference' (RL's reference policy: sft/policy when an sft
  # stage ran, else model.source) or 'source' (model.source: the effect of every stage together)
  c.eval.baseline = 'reference'
  c.eval.judge = True  # False: the checked effect alone (no win rate or harmless rate: no judge)
  c.eval.human_pairs = ''  # optional JSONL of human-labeled pairs for judge-human alignment
  c.eval.human_pairs_limit = 0
  c.eval.samples_in_report = 4  # held-out responses of both policies side by side in report.md

  # validate: the judge against config.check on pairs from the policy (held-out prompts)
  c.validate = ml_collections.ConfigDict()
  c.validate.question = ''  # pointwise: a yes/no question about one response ('' = pairwise only)
  c.validate.principle = ''  # pairwise: a principle for the judge's request ('' = judge.task alone)
  c.validate.num_prompts = 32  # held-out prompts, two responses each; 0 = all
  c.validate.sampling = sampling(64, temperature=1.0)

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.interval = 10  # steps (RL: iterations) between checkpoints
  c.checkpoint.keep = 2
  c.checkpoint.async_save = True
  c.checkpoint.restore_from = ''  # WORKDIR/<stage>/checkpoints[/<step>] to start that stage from

  c.train = ml_collections.ConfigDict()
  c.train.max_nonfinite_steps = 3  # more skipped (non-finite) updates in a row stop the run

  c.generate = ml_collections.ConfigDict()
  c.generate.prompts = ('What is the capital of France?',)
  c.generate.chat_template = True
  c.generate.max_new_tokens = 64
  c.generate.temperature = 0.0
  c.generate.top_k = 0
  c.generate.top_p = 1.0
  c.generate.prompt_buckets = (64, 128, 256, 512)
  return c
