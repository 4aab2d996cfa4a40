"""The model lifecycle.

The model-directory audit and prune, where a configured model is (`locate`: offline,
never a download), and the registry of models in use (Redis). Releasing the engines
that hold a model lives with the engines (`tasks/engines/release.py`).
"""
