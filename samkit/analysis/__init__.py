"""Measurements the notebooks share: prompt bias (CPC-SAM), loss landscapes of prompts (ProSAM), prompt
weights (SSPrompt) and score-free instance numbers (OpenWorldSAM).

Analysis sits above the methods and the trainer: it may import them, nothing below imports it.
"""
