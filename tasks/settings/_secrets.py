"""The refusal of placeholder and empty secrets: one line naming the variable.

A kit copied with its example values, or a Secret whose key came out empty, must stop
every role at start, not run with a password anyone can guess (or none). Checked by
`Settings.from_env` (every process), over the environment it reads:

- passwords in REDIS_URL and BROKER_URL (`scheme://user:PASSWORD@host`): a URL that
  names a user must carry a password;
- FLOWER_BASIC_AUTH (`user:password`) and REDIS_PASSWORD_<USER> (the Redis container's,
  scripts/redis_acl.py) when set; OCR_CALLBACK_SECRET and AWS_SECRET_ACCESS_KEY may be
  empty (unsigned callbacks; no S3 keys), never a placeholder;
- refused: an empty password where one is given (`user:@`, `user:`), a placeholder
  (`CHANGE-ME`, `changeme`, `replace-me`, `<password>`, `xxx`, `password`, `secret`),
  and a reference the deployment left unexpanded (`$(REDIS_PASSWORD)`, `${...}`).

Pure; runs wherever `Settings.from_env()` runs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit

URL_VARIABLES = ("REDIS_URL", "BROKER_URL")
# user:password; an empty FLOWER_BASIC_AUTH stays "unset" (scripts/run_flower.py).
PAIR_VARIABLES = ("FLOWER_BASIC_AUTH",)
# Empty is allowed (callbacks go unsigned; no S3 keys), a placeholder is not.
PLAIN_VARIABLES = ("OCR_CALLBACK_SECRET", "AWS_SECRET_ACCESS_KEY")
# Set but empty is refused too.
REDIS_PASSWORD_PREFIX = "REDIS_PASSWORD_"

_PLACEHOLDER = re.compile(
    r"change[-_ .]?me|replace[-_ .]?me|\A<[^>]*>\Z|\Ax{3,}\Z|\A(password|secret|passwd)\Z|"
    r"\$\(|\$\{", re.IGNORECASE)


def placeholder(value: str) -> bool:
    """Whether `value` is an example value or an unexpanded reference, not a secret."""
    return bool(_PLACEHOLDER.search(value))


def secret_problem(env: Mapping[str, str]) -> str | None:
    """The first placeholder or empty secret in `env`, as one line naming it; or None."""
    for name in URL_VARIABLES:
        problem = _url_problem(env.get(name, ""))
        if problem:
            return f"{name}: {problem}"
    for name in PAIR_VARIABLES:
        value = env.get(name, "")
        if value:
            _, sep, password = value.partition(":")
            problem = _password_problem(password) if sep else "is not user:password"
            if problem:
                return f"{name}: {problem}"
    for name in PLAIN_VARIABLES:
        if placeholder(env.get(name, "")):
            return f"{name}: {_password_problem(env[name])}"
    for name in sorted(n for n in env if n.startswith(REDIS_PASSWORD_PREFIX)):
        problem = _password_problem(env[name])
        if problem:
            return f"{name}: {problem}"
    return None


def _url_problem(url: str) -> str | None:
    if "@" not in url:
        return None  # no credentials: a local Redis without a password
    try:
        parts = urlsplit(url)
    except ValueError:
        return None  # the URL's own check says what is wrong with it
    if parts.username is None and parts.password is None:
        return None
    if parts.password is None:
        return "the URL names a user but no password"
    return _password_problem(unquote(parts.password), what="the URL's password")


def _password_problem(password: str, what: str = "the secret") -> str | None:
    if not password.strip():
        return f"{what} is empty: set it (the kit's secrets: docs/deploy.md)"
    if placeholder(password):
        return (f"{what} is a placeholder or an unexpanded reference, not a secret: set "
                "the real one (docs/deploy.md)")
    return None
