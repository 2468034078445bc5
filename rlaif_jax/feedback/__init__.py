"""AI feedback: the judge's request texts (`requests`), the option log-prob kernel (`option_scoring`),
soft preferences with position debiasing and direct scores (`preferences`), the `Judge` that turns
strings into them (`judge`), constitutions and critique-and-revise (`constitution`), labeling one batch
of pairs (`labeling`) and agreement with human labels (`alignment`). No files are read or written here:
the pipeline does that."""
