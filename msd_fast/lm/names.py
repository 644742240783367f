"""Names, formats and limits the configuration and the LM file readers validate against without importing
transformers: the language-model datasets, models and head modes, and the largest vocabulary and sequence
length any file may declare (one declaration each; models.py, exits.py, corpus.py and the readers use them)."""
LM_DATASETS = ("python-stdlib",)
LM_MODELS = ("llama-tiny", "qwen2-tiny", "gpt2-tiny")
LM_HEADS = ("shared", "per_exit")
MAX_VOCAB = 1 << 20      # token ids per vocabulary (a corpus, a checkpoint, an export)
MAX_SEQ_LEN = 1 << 20    # tokens per training sequence
MODEL_TYPES = ("llama", "qwen2", "gpt2")  # config.json model_type values a folder we read may have (family.py's)
EXITS_FILE = "msd_exits.json"  # LMExits.save_pretrained's record beside a Hugging Face model folder's files
EXITS_FORMAT, EXITS_VERSION = "msd_fast-lm-exits", 1
