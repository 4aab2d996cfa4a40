"""The Procfile's Python processes and `make`'s helpers, run as modules from the repository root.

`python -m scripts.run_api` (not `python scripts/run_api.py`): `-m` puts the working
directory on `sys.path`, so `tasks` imports under any Procfile runner without the
`PYTHONPATH` that only `make` would set.
"""
