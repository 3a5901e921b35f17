"""Cached sampling for Nano3Model: `generate` (greedy / temperature / top-p, stop tokens, log-probs)."""

from nemotron_core.generation.generate import GenerationResult, generate, sample_next

__all__ = ["GenerationResult", "generate", "sample_next"]
