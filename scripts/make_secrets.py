#!/usr/bin/env python3
"""The kits' secrets, made on the operator's machine: `python -m scripts.make_secrets`.

- `env FILE [--namespace NS]`: an env file with a random value for every secret the
  kits read (compose's `.env`, the Kubernetes kit's `deploy/kubernetes/secrets/
  ocr-secrets.env`): one password per Redis user (`REDIS_PASSWORD_<USER>`, the users of
  tasks/redis_users.py, those of a replicated Redis's servers too), the Sentinels'
  own (`REDIS_SENTINEL_PASSWORD`), Flower's (`FLOWER_PASSWORD`), RabbitMQ's and the
  KEDA management URL that carries it, and S3 keys (compose's MinIO root user, which its
  workers use; the Kubernetes kit does not read them). Hex, so each goes into a URL as
  it is. Mode 0600; an existing file is never overwritten.
- `certs DIR [--namespace NS] [--name NAME ...]`: a private CA (`ca.crt`, `ca.key`) and
  Redis's certificate signed by it (`tls.crt`, `tls.key`), with openssl, for the names
  the kits reach Redis by (compose's `redis`, the Kubernetes Service `ocr-redis` in
  namespace NS, loopback) plus `--name`s. The folder is made 0700; keep `ca.key`
  elsewhere once done. Without cert-manager, this is what the Secret `ocr-redis-tls`
  and compose's TLS files hold (docs/deploy.md, "Certificates").

Runs on the operator's machine, never in the service.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

from tasks.redis_users import HA_USERS, USERS

CA_DAYS = 3650
CERT_DAYS = 825


def secret_values(namespace: str = "ocr") -> dict[str, str]:
    """Every secret of the kits, random, by the variable (and Secret key) it goes in."""
    values = {u.password_variable: secrets.token_hex(24) for u in (*USERS, *HA_USERS)}
    # The Sentinels' own password (a replicated Redis: OCR_REDIS_SENTINEL_PASSWORD).
    values["REDIS_SENTINEL_PASSWORD"] = secrets.token_hex(24)
    values["FLOWER_PASSWORD"] = secrets.token_hex(16)
    values["RABBITMQ_PASSWORD"] = secrets.token_hex(24)
    values["RABBITMQ_MANAGEMENT_URL"] = (
        f"http://ocr:{values['RABBITMQ_PASSWORD']}@ocr-rabbitmq.{namespace}.svc"
        ".cluster.local:15672/ocr")
    values["AWS_ACCESS_KEY_ID"] = f"ocr-{secrets.token_hex(6)}"
    values["AWS_SECRET_ACCESS_KEY"] = secrets.token_hex(24)
    return values


def write_env(path: Path, namespace: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("# Made by `python -m scripts.make_secrets env`: keep it out of git.\n")
        out.writelines(f"{k}={v}\n" for k, v in secret_values(namespace).items())


def redis_names(namespace: str) -> list[str]:
    """The names the kits reach Redis by: compose, the Kubernetes Service, loopback.

    With a replicated Redis, its members too: compose's `ha` services and each pod of
    the overlay redis-ha (`ocr-redis-ha-N.ocr-redis-ha`, as they announce themselves).
    """
    service, members = "ocr-redis", "*.ocr-redis-ha"
    return ["redis", service, f"{service}.{namespace}", f"{service}.{namespace}.svc",
            f"{service}.{namespace}.svc.cluster.local", "redis-replica-1",
            "redis-replica-2", "sentinel-1", "sentinel-2", "sentinel-3", members,
            f"{members}.{namespace}", f"{members}.{namespace}.svc",
            f"{members}.{namespace}.svc.cluster.local", "localhost", "127.0.0.1"]


def write_certs(folder: Path, names: list[str]) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise SystemExit("make_secrets: openssl is not installed (or use cert-manager: "
                         "docs/deploy.md)")
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    if (folder / "ca.crt").exists():
        raise SystemExit(f"make_secrets: {folder / 'ca.crt'} exists: not overwritten")
    alt = ",".join(f"IP:{n}" if n.replace(".", "").isdigit() else f"DNS:{n}" for n in names)
    (folder / "server.ext").write_text(
        f"subjectAltName={alt}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for args in (
            ["req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days",
             str(CA_DAYS), "-subj", "/CN=ocr-queue Redis CA", "-addext",
             "basicConstraints=critical,CA:TRUE", "-addext",
             "keyUsage=critical,keyCertSign,cRLSign"],
            ["req", *ec, "-keyout", "tls.key", "-out", "tls.csr", "-subj", f"/CN={names[0]}"],
            ["x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "tls.crt", "-days", str(CERT_DAYS), "-extfile",
             "server.ext"]):
        subprocess.run([openssl, *args], cwd=folder, check=True, capture_output=True,
                       timeout=60)
    for name in ("tls.csr", "server.ext", "ca.srl"):
        (folder / name).unlink(missing_ok=True)
    (folder / "ca.key").chmod(0o600)
    # Redis in a container reads the key through a mount as its own user (uid 10001):
    # the folder (0700) keeps it private on this machine.
    (folder / "tls.key").chmod(0o644)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.make_secrets",
                                     description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    env = commands.add_parser("env", help="an env file of random secrets")
    env.add_argument("file", type=Path)
    certs = commands.add_parser("certs", help="a CA and Redis's certificate")
    certs.add_argument("folder", type=Path)
    certs.add_argument("--name", action="append", default=[],
                       help="another name (or IP address) clients reach Redis by")
    for command in (env, certs):
        command.add_argument("--namespace", default="ocr",
                             help="the Kubernetes namespace (default ocr)")
    args = parser.parse_args(argv)
    if args.command == "env":
        try:
            write_env(args.file, args.namespace)
        except FileExistsError:
            print(f"make_secrets: {args.file} exists: not overwritten", file=sys.stderr)
            return 1
        print(f"make_secrets: wrote {args.file} (mode 0600)")
        return 0
    write_certs(args.folder, [*redis_names(args.namespace), *args.name])
    print(f"make_secrets: wrote {args.folder}/ca.crt, tls.crt, tls.key and ca.key "
          "(keep ca.key elsewhere)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
