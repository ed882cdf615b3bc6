"""Minitron pruning of Llama-family HF models: activation importance, width and depth."""
