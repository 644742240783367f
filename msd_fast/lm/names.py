"""Names, formats and limits the configuration and the LM file readers validate against without importing
transformers: the language-model datasets, models and head modes, and the largest vocabulary and sequence
length any file may declare (one declaration each; models.py, exits.py, corpus.py and the readers use them)."""
import pathlib

LM_DATASETS = ("python-stdlib", "text")  # text: a corpus of your own data at --data-dir (text_data.py)
LM_MODELS = ("llama-tiny", "qwen2-tiny", "gpt2-tiny")  # or a Hugging Face model folder (is_model_folder)
LM_HEADS = ("shared", "per_exit")
LM_BATCHINGS = ("packed", "padded")  # rows.py: windows across examples, or one example per row
LAYER_DROPOUT_SCALES = ("uniform", "exp", "linear", "log", "sin", "sigmoid")  # layer_dropout.py's S(l)
MAX_VOCAB = 1 << 20      # token ids per vocabulary (a corpus, a checkpoint, an export)
MAX_SEQ_LEN = 1 << 20    # tokens per training sequence
EVAL_SEQUENCES = 512     # val / test sequences the lm task evaluates when val_size is not set (the first ones)
MODEL_TYPES = ("llama", "qwen2", "gpt2")  # config.json model_type values a folder we read may have (family.py's)
EXITS_FILE = "msd_exits.json"  # LMExits.save_pretrained's record beside a Hugging Face model folder's files
EXITS_FORMAT, EXITS_VERSION = "msd_fast-lm-exits", 1


def is_model_folder(name) -> bool:
    """Whether a `model` value names a Hugging Face model folder (a directory with config.json) rather than one
    of LM_MODELS."""
    return isinstance(name, str) and pathlib.Path(name, "config.json").is_file()
