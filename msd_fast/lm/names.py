"""Names and limits the configuration and the LM file readers validate against without importing
transformers: the language-model datasets, models and head modes, and the largest vocabulary and sequence
length any file may declare (one declaration each; models.py, exits.py, corpus.py and the readers use them)."""
LM_DATASETS = ("python-stdlib",)
LM_MODELS = ("llama-tiny", "qwen2-tiny", "gpt2-tiny")
LM_HEADS = ("shared", "per_exit")
MAX_VOCAB = 1 << 20      # token ids per vocabulary (a corpus, a checkpoint, an export)
MAX_SEQ_LEN = 1 << 20    # tokens per training sequence
