"""Evaluation suite for checkpoints produced by the factory (or any HF checkpoint)."""
