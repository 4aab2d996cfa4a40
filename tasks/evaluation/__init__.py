"""Accuracy against ground truth: the metric (`scoring.py`) and ground-truth files.

Light (the standard library and rapidfuzz), so clients, the API and workers alike
score reads without loading an engine, image or PDF module.
"""
