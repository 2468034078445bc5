"""rlaif_jax: reinforcement learning from AI feedback in JAX/Flax.

One sub-package per idea, each importing only those below it (tests/test_layering.py keeps it so):
  infra       mesh and sharding rules, checkpoints, metrics, progress, multi-host runtime, errors
  models      the transformer, Hugging Face / GGUF weights, load_model
  generation  the sampler, teacher-forced scoring, text in and out
  feedback    the AI judge: request texts, soft preferences, direct scores, constitutions, labeling
  training    train state, the generic train step, SFT, the reward model
  rl          RL settings, losses, advantages, KL control, the update, reward sources, one iteration
  data        prompt sources, human-labeled pairs, constitution files
  pipeline    the stages in one workdir (the only layer doing IO)
  plan        ahead-of-time compilation of every step for a TPU topology
The entry points `rlaif_jax.main` and `rlaif_jax.plan` are the only readers of flags.
"""
