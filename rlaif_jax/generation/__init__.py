"""Generation: the jitted KV-cache sampler (`sampler`), teacher-forced log-probs, entropies and values
of given responses (`scoring`), and strings in / strings out (`text`: tokenizing, padding, the text
generator). Pure steps on arrays; no files are read or written here."""
