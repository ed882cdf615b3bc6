"""Alignment data: chat rendering with assistant-only loss masks (SFT, DPO)."""
