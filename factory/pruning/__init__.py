"""Minitron pruning of Llama-family HF models: activation importance (``importance``),
width and depth pruning (``width``, ``depth``), architectures within a parameter
budget (``budget``) and the search that ranks them (``search``)."""
