"""OCRmyPDF engine plugin: OCRmyPDF's pages read by the OCR job queue's workers.

Loaded by OCRmyPDF (entry point group `ocrmypdf`) in its main process and in each of
its page workers; `plugin.py` holds the hooks and the engine, `http_api.py` and
`broker.py` the two ways to the service, `pages.py` what one page's job is.
"""

__version__ = "0.1.0"
