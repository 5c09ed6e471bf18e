"""Loading a model: where its files are, and opening them (config, tokenizer, weights)."""
