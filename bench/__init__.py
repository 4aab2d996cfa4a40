"""Benchmarks of the OCR queue; run them with `make bench` or `python -m bench`."""
