"""Benchmarks of the OCR queue (issue 7); run them with `make bench` or `python -m bench`."""
