"""The pure pipeline: inputs, images, PDF, preprocessing, pages and results.

Runs without Celery or Redis; worker pool children call it through `tasks.lifecycle`.
"""
