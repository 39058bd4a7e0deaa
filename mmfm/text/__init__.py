"""Text: tokenizers, chat/interleaved templates, point formats."""
