"""Measurements the notebooks share: prompt bias (CPC-SAM) and loss landscapes of prompts (ProSAM).

Analysis sits above the methods and the trainer: it may import them, nothing below imports it.
"""
