"""Running models: the Backend protocol, the llama.cpp fallback and (soon) the native engine."""
