"""The codes of a batch's manifest lines and of its door, beside tasks/errors.py.

Everywhere, as tasks/errors.py is; tasks/error_codes.py lists these codes in
`ERROR_CLASSES` with those of tasks/errors.py.
"""

from __future__ import annotations

from tasks.errors import OcrError


class NoUrl(OcrError):
    """A manifest line that is a JSON object naming no `url` (`{}`): that line fails."""

    code = "no_url"
    default_message = "the manifest line names no url"


class DuplicateLine(OcrError):
    """A manifest line naming a document and options an earlier line named: read once."""

    code = "duplicate"
    default_message = "an earlier manifest line names the same document and options"


class TargetInSource(OcrError):
    """A batch whose `result_url` lies inside its `source`, or holds it: refused."""

    code = "target_in_source"
    default_message = "the batch's result_url and its source overlap"

