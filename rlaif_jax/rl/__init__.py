"""Reinforcement learning: the algorithm settings (`config`), per-token losses and KL estimators
(`losses`), advantages and returns (`advantages`), the KL controller (`kl_control`), the jitted update
(`update`), reward sources that score rollouts (`rewards`) and one RL iteration (`loop`). Pure steps;
the pipeline's rl stage owns the files, checkpoints and the outer loop."""
