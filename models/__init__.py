"""What a model is: GGUF reading and validation, architectures, tokenizer, chat and FIM templates, the catalog."""
