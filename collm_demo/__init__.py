"""CoLLM demo: collaborative embeddings injected into an LLM's token space.

The pipeline, in reading order:
``data`` → ``cf`` (external CF model) → ``llm`` + ``collm`` (the forward pass)
→ ``train`` → ``evaluate`` → ``embedding_map`` → ``ui``.
"""

__version__ = "0.1.0"
