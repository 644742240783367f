"""Names the configuration validates against without importing transformers: the language-model datasets,
models and head modes (one declaration each; lm/models.py and lm/exits.py read them)."""
LM_DATASETS = ("python-stdlib",)
LM_MODELS = ("llama-tiny", "qwen2-tiny", "gpt2-tiny")
LM_HEADS = ("shared", "per_exit")
