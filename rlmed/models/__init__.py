"""Loading models and tokenizers, and building the tiny ones the embedded recipe and tests train."""
