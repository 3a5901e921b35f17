"""Nemotron Recipes core library: data, model, parallelism, training and checkpoints for Nano3."""

__version__ = "0.1.0"
