"""Training: the optimizer, train state and its shardings (`state`), the generic jitted train step with
gradient accumulation and the non-finite guard (`step`), supervised fine-tuning (`sft`) and the reward
model (`reward_model`). Pure steps; no files are read or written here."""
