"""The S3 adapter's clients: readied in a worker's parent, and their connection pool.

Readied before the pool forks, a child's first S3 client reads no model; otherwise it
imports boto3 and reads S3's models again (half a second of CPU), in every child that
replaces a recycled one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import botocore.loaders
import pytest

from tasks.lifecycle import _s3, fetcher
from tasks.settings import Settings


@pytest.fixture(autouse=True)
def fresh_session() -> Iterator[None]:
    _s3.reset_clients()
    yield
    _s3.reset_clients()


def files_a_forked_child_reads() -> list[str]:
    """The botocore data files a child forked now reads to make its first S3 client."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: record, make the client, report
        os.close(read_end)
        read: list[str] = []
        load_file = botocore.loaders.JSONFileLoader.load_file

        def recorded(self: object, path: str) -> object:
            read.append(path)
            return load_file(self, path)  # type: ignore[arg-type]

        botocore.loaders.JSONFileLoader.load_file = recorded  # type: ignore[method-assign]
        os.environ.update(AWS_ACCESS_KEY_ID="child", AWS_SECRET_ACCESS_KEY="child",
                          AWS_DEFAULT_REGION="us-east-1")
        _s3._made(5.0, False)
        with os.fdopen(write_end, "w") as out:
            json.dump(read, out)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as answer:
        read = json.load(answer)
    assert os.waitpid(pid, 0)[1] == 0
    return read


def s3_models(paths: list[str]) -> list[str]:
    return [path for path in paths if f"{os.sep}s3{os.sep}" in path]


def test_a_child_forked_after_preload_reads_no_s3_model() -> None:
    fetcher.preload(Settings.from_env({"OCR_ALLOWED_URLS": "s3://bucket/"}))
    assert s3_models(files_a_forked_child_reads()) == []


def test_without_a_bucket_allowed_nothing_is_loaded_and_a_child_reads_the_models() -> None:
    fetcher.preload(Settings.from_env({"OCR_ALLOWED_URLS": "https://example.com/docs/"}))
    assert _s3._session.cache_info().currsize == 0
    assert any(path.endswith("service-2.json") or "service-2" in path
               for path in s3_models(files_a_forked_child_reads()))


def test_a_session_botocore_refuses_is_left_to_the_children(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    fetcher.preload(Settings.from_env({"OCR_ALLOWED_URLS": "s3://bucket/"}))
    assert "the S3 client was not prepared (ProfileNotFound)" in caplog.text


def test_one_client_keeps_a_connection_for_each_reader_of_a_manifest_s_parts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks.lifecycle.batch_manifest import READERS

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    assert _s3._made(5.0, False).meta.config.max_pool_connections >= READERS
