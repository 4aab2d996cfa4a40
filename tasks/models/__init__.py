"""The model lifecycle.

The model-directory audit and prune, the registry of models in use (Redis), and engine
release in pool children.
"""
