"""The pipeline: the stages a config names, run in order in one workdir (`runner`), what they share
(`context`), the resumable training loop they use (`training_loop`), one module per stage
(`generate`, `sft`, `label`, `reward_model`, `rl`, `evaluate`, `export`) and the evaluation report
(`report`). The only layer that reads and writes files."""
