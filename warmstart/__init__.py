"""warmstart: an optimized LLM variant as a live OpenAI-compatible endpoint on your own cloud."""

__version__ = "0.1.0"
