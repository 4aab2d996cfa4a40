"""URLs in one canonical form, compared segment by segment.

tasks/lifecycle/outbound.py and tasks/lifecycle/url_policy.py: the spellings that walk
out of a prefix on an origin that decodes escapes before it resolves `..`, and those
that are the same URL.
"""

from __future__ import annotations

import pytest

from tasks.errors import BadRequest, OcrError, UrlNotAllowed
from tasks.lifecycle.outbound import canonical_path, path_under
from tasks.lifecycle.url_policy import check_url, narrow, parse_url

B = ("http://origin.example/b/",)


@pytest.mark.parametrize("path", [
    "/b/..%2fa/secret.png",        # the encoded slash an origin decodes first
    "/b/..%2Fa/secret.png",        # in either case
    "/b/%2e%2e/a/secret.png",      # an encoded dot segment
    "/b/%2E%2E/a/secret.png",
    "/b/.%2e/a/secret.png",        # half encoded
    "/b/%2e./a/secret.png",
    "/b/%2e/x.png",                # an encoded `.`
    "/b/x%2Fy.png",                # an encoded slash inside a segment
    "/b/..%5ca/secret.png",        # an encoded backslash
    "/b/x%5Cy.png",
    "/b/..%252fa/secret.png",      # encoded twice: an origin that decodes twice
    "/b/%252e%252e/a/secret.png",
    "/b/x%255Cy.png",
    "/b/..;x/a/secret.png",        # a dot segment with parameters (servlet containers)
])
def test_paths_whose_meaning_depends_on_the_origin_are_refused(path: str) -> None:
    with pytest.raises(UrlNotAllowed):
        canonical_path(path)
    with pytest.raises(UrlNotAllowed):
        check_url(f"http://origin.example{path}", B)


@pytest.mark.parametrize("path", ["/b/%zz.png", "/b/x%2", "/b/%00.png", "/b/%0a.png",
                                  "/b/%7f.png"])
def test_malformed_and_control_escapes_are_bad_requests(path: str) -> None:
    with pytest.raises(BadRequest):
        canonical_path(path)


def test_a_raw_backslash_is_refused() -> None:
    with pytest.raises(BadRequest):
        check_url("http://origin.example/b/..\\a/secret.png", B)


@pytest.mark.parametrize("path,canonical", [
    ("/b/%7Euser/x.png", "/b/~user/x.png"),      # unreserved: decoded
    ("/b/%41%62c.png", "/b/Abc.png"),
    ("/b/a%2db_c.png", "/b/a-b_c.png"),
    ("/b/%e4%b8%ad.png", "/b/%E4%B8%AD.png"),    # reserved / non-ASCII: upper case
    ("/b/a%20b.png", "/b/a%20B.png".replace("B", "b")),
    ("/b/./x.png", "/b/x.png"),                  # literal dot segments: resolved
    ("/b/c/../x.png", "/b/x.png"),
    ("/b/../../../x.png", "/x.png"),             # never above the root
    ("/b/x.png;v=1", "/b/x.png;v=1"),            # parameters on a name: kept
    ("/b/...png", "/b/...png"),                  # dots in a name: no segment
])
def test_the_same_url_in_one_spelling(path: str, canonical: str) -> None:
    assert canonical_path(path) == canonical


def test_literal_dot_segments_are_resolved_before_the_prefix_is_compared() -> None:
    assert check_url("http://origin.example/b/c/../x.png", B).url \
        == "http://origin.example/b/x.png"
    with pytest.raises(UrlNotAllowed):
        check_url("http://origin.example/b/../a/secret.png", B)


@pytest.mark.parametrize("url,prefix,inside", [
    ("http://origin.example/bb/x.png", "http://origin.example/b/", False),
    ("http://origin.example/bb/x.png", "http://origin.example/b", False),
    ("http://origin.example/b/x.png", "http://origin.example/b", True),
    ("http://origin.example/b", "http://origin.example/b", True),
    ("http://origin.example/b/x.png", "http://origin.example", True),
    ("http://origin.example.evil/b/x.png", "http://origin.example/", False),
    ("http://origin.example:8080/b/x.png", "http://origin.example/b/", False),
    ("https://origin.example/b/x.png", "http://origin.example/b/", False),
    ("http://ORIGIN.example:80/b/x.png", "http://origin.example/b/", True),
    ("http://origin.example/%62/x.png", "http://origin.example/b/", True),  # %62 is b
    ("s3://tenant-b/cc/x.png", "s3://tenant-b/c", False),
    ("s3://tenant-b/cc/x.png", "s3://tenant-b/c/", False),
    ("s3://tenant-b/c/x.png", "s3://tenant-b/c", True),
    ("s3://tenant-b/c/x.png", "s3://tenant-b/", True),
    ("s3://tenant-bb/c/x.png", "s3://tenant-b/", False),
])
def test_prefixes_are_compared_on_segments(url: str, prefix: str, inside: bool) -> None:
    if inside:
        assert check_url(url, (prefix,)).url == parse_url(url).url
    else:
        with pytest.raises(UrlNotAllowed):
            check_url(url, (prefix,))


@pytest.mark.parametrize("key,canonical", [
    ("a/../b.png", "b.png"), ("./b.png", "b.png"), ("a/./b.png", "a/b.png"),
    ("c/./d/../x.png", "c/x.png"), ("../../b.png", "b.png"), ("a/...png", "a/...png")])
def test_s3_keys_dot_segments_are_resolved_as_documented(key: str, canonical: str) -> None:
    assert check_url(f"s3://tenant-b/{key}", ("s3://tenant-b/",)).key == canonical


def test_s3_dot_segments_are_resolved_before_the_prefix_is_compared() -> None:
    assert check_url("s3://tenant-b/b/./x.png", ("s3://tenant-b/b/",)).url \
        == "s3://tenant-b/b/x.png"
    with pytest.raises(UrlNotAllowed):
        check_url("s3://tenant-b/b/../a/secret.png", ("s3://tenant-b/b/",))
    with pytest.raises(BadRequest):  # resolved to the bucket itself: no object
        check_url("s3://tenant-b/a/..", ("s3://tenant-b/",))


def test_an_s3_key_is_literal_otherwise() -> None:
    # S3 decodes no escape: `%2F` in a key is three characters of one object's name
    assert check_url("s3://tenant-b/a%2Fb.png", ("s3://tenant-b/",)).key == "a%2Fb.png"


def test_narrowed_prefixes_keep_segments_apart() -> None:
    assert narrow(("s3://tenant-b/",), ("s3://tenant-b/c",)) == ("s3://tenant-b/c",)
    assert narrow(("http://origin.example/b/",), ("http://origin.example/bb/",)) == ()


def test_path_under_by_segments() -> None:
    assert path_under("/b/x", "/b/") and path_under("/b/x", "/b") and path_under("/b", "/b")
    assert not path_under("/bb/x", "/b") and not path_under("/bb/x", "/b/")


def test_refusals_carry_the_callers_code() -> None:
    from tasks.errors import CallbackNotAllowed

    with pytest.raises(OcrError) as refused:
        canonical_path("/hooks/%2e%2e/admin", "`callback_url`", CallbackNotAllowed)
    assert refused.value.code == "callback_not_allowed"


def test_only_the_fetcher_reads_through_the_s3_adapter_and_the_https_reader() -> None:
    """The lower-level readers are private to the one fetcher (the backup files aside)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    users: dict[str, set[str]] = {"_s3": set(), "_https_objects": set()}
    for path in (root / "tasks").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                for private in users:
                    if name == f"tasks.lifecycle.{private}":
                        users[private].add(path.relative_to(root).as_posix())
    assert users["_https_objects"] == {"tasks/lifecycle/fetcher.py"}
    # the https reader takes the adapter's piece size and its ObjectInfo record only
    assert users["_s3"] <= {"tasks/lifecycle/fetcher.py", "tasks/lifecycle/backup_files.py",
                            "tasks/lifecycle/_https_objects.py"}


def test_a_prefix_that_is_no_canonical_url_holds_nothing() -> None:
    assert narrow(("http://origin.example/b%2fc/",), None) == ("http://origin.example/b%2fc/",)
    assert narrow(("http://origin.example/b%2fc/",), ("http://origin.example/",)) == ()
    with pytest.raises(UrlNotAllowed):
        check_url("http://origin.example/b/x.png", ("http://origin.example/b%2fc/",))
