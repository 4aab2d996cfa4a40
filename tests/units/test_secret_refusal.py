"""A placeholder or empty secret stops every process at `Settings.from_env`, naming it."""

from __future__ import annotations

import pytest

from tasks.settings import Settings, SettingsError


@pytest.mark.parametrize("env, variable", [
    ({"REDIS_URL": "redis://:CHANGE-ME@redis:6379/0"}, "REDIS_URL"),
    ({"REDIS_URL": "rediss://worker:changeme@redis:6379/0"}, "REDIS_URL"),
    ({"REDIS_URL": "rediss://worker:@redis:6379/0"}, "REDIS_URL"),
    ({"REDIS_URL": "rediss://worker@redis:6379/0"}, "REDIS_URL"),
    ({"REDIS_URL": "rediss://worker:$(REDIS_PASSWORD)@redis:6379/0"}, "REDIS_URL"),
    ({"REDIS_URL": "rediss://worker:${REDIS_PASSWORD}@redis:6379/0"}, "REDIS_URL"),
    ({"BROKER_URL": "amqp://ocr:change-me-rabbit@rabbitmq:5672/ocr"}, "BROKER_URL"),
    ({"FLOWER_BASIC_AUTH": "ocr:"}, "FLOWER_BASIC_AUTH"),
    ({"FLOWER_BASIC_AUTH": "ocr:<password>"}, "FLOWER_BASIC_AUTH"),
    ({"FLOWER_BASIC_AUTH": "ocr"}, "FLOWER_BASIC_AUTH"),
    ({"OCR_CALLBACK_SECRET": "replace-me"}, "OCR_CALLBACK_SECRET"),
    ({"AWS_SECRET_ACCESS_KEY": "CHANGE-ME-s3"}, "AWS_SECRET_ACCESS_KEY"),
    ({"REDIS_PASSWORD_WORKER": ""}, "REDIS_PASSWORD_WORKER"),
    ({"REDIS_PASSWORD_API": "xxxxxx"}, "REDIS_PASSWORD_API"),
])
def test_refused_with_one_line_naming_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    message = str(caught.value)
    assert message.startswith(f"{variable}: ") and "\n" not in message
    assert "CHANGE" not in message and "change-me" not in message  # the value is not shown


@pytest.mark.parametrize("env", [
    {},  # a local Redis without a password
    {"REDIS_URL": "redis://127.0.0.1:6379/0"},
    {"REDIS_URL": "rediss://worker:5f3a9c@redis:6379/0?ssl_cert_reqs=required"},
    {"REDIS_URL": "redis://:p%40ss%24word@127.0.0.1:6379/0"},
    {"BROKER_URL": "amqp://guest:guest@127.0.0.1:5672/vhost"},
    {"FLOWER_BASIC_AUTH": ""},  # unset: scripts/run_flower.py makes a password
    {"OCR_CALLBACK_SECRET": ""},  # callbacks unsigned
    {"AWS_SECRET_ACCESS_KEY": ""},  # no S3 keys given
    {"FLOWER_BASIC_AUTH": "ops:9d1c0e"},
])
def test_real_or_absent_secrets_pass(env: dict[str, str]) -> None:
    Settings.from_env(env)
