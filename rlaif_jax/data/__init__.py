"""Data: prompt sources, the train / held-out split and grain batches (`prompts`), the TFDS builder for
local JSONL prompts (`prompt_dataset`), human-labeled preference pairs (`human_pairs`) and constitution
files (`constitution_files`). Imports only `infra`."""
