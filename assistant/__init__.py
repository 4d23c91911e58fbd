"""The assistant application: CLI, settings, model loading, prompts and benchmarks."""

__version__ = "0.1.0"
