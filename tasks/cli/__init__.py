"""The command lines' shared core: `submit.py` (the user's) and `ocr_admin.py` (the operator's).

Runs on a user's or operator's machine, as a client: `core` holds the exit codes, the
`Session` (settings, the Redis it finds, a client made on first use) and the one
mapping from errors to exit codes; `output` prints and writes results; `waiting` waits
for jobs with the live workers watched.
"""
