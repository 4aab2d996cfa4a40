"""A TLS-only, ACL-enabled redis-server of the tests' own, and the certificates it serves.

`make_certificates` makes a private CA and a server certificate for the names given
(the `cryptography` package); `AclRedisServer` starts Debian's redis-server on a free
loopback port, TLS only (`port 0`), its users those of tasks/redis_users.py as
`scripts/redis_acl.py` writes them (each with a password of its own, `default` off),
plus the tests' own `tests` user, which alone may read `ACL LOG`. `url(user)` is the
verified `rediss://` URL a role of that user connects with.

Runs in the test process; the server in a process of its own.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tasks.redis_users import USERS
from tests.harness import ROOT, eventually, free_port

TESTS_USER = "tests"


@dataclass(frozen=True)
class Certificates:
    """PEM files: the CA's certificate, the server's certificate and key."""

    ca: Path
    cert: Path
    key: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_certificates(folder: Path, names: tuple[str, ...] = ("127.0.0.1", "localhost"),
                      ca_name: str = "ocr-test-ca") -> Certificates:
    """A CA, and a server certificate it signed for `names` (IP addresses or DNS names)."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name(ca_name)).issuer_name(_name(ca_name))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                       False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    cert = (x509.CertificateBuilder().subject_name(_name(names[0])).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    files = Certificates(folder / "ca.crt", folder / "tls.crt", folder / "tls.key")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(_pem(key))
    files.key.chmod(0o600)
    return files


class AclRedisServer:
    """redis-server speaking only TLS, with the service's users and the tests' own."""

    def __init__(self, workdir: Path, appendonly: bool = False) -> None:
        self.workdir = workdir
        self.appendonly = appendonly  # an append-only file, fsynced: restarts keep data
        self.port = free_port()
        self.certs = make_certificates(workdir / "tls")
        self.passwords = {u.name: secrets.token_urlsafe(18) for u in USERS}
        self.passwords[TESTS_USER] = secrets.token_urlsafe(18)
        self.proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        """The Redis container's environment: REDIS_PASSWORD_<USER> for each user."""
        return {u.password_variable: self.passwords[u.name] for u in USERS}

    def url(self, user: str, host: str = "127.0.0.1", ca: Path | None = None) -> str:
        """The verified rediss:// URL of `user` (its own password, the CA's file)."""
        return (f"rediss://{user}:{self.passwords[user]}@{host}:{self.port}/0"
                f"?ssl_cert_reqs=required&ssl_ca_certs={ca or self.certs.ca}")

    def client(self, user: str = TESTS_USER) -> redis.Redis:
        return redis.Redis.from_url(self.url(user), socket_connect_timeout=5)

    def start(self) -> AclRedisServer:
        conf = self.workdir / "redis.conf"
        conf.write_text("\n".join([
            "bind 127.0.0.1 127.0.0.2", "port 0", f"tls-port {self.port}",
            f"tls-cert-file {self.certs.cert}", f"tls-key-file {self.certs.key}",
            f"tls-ca-cert-file {self.certs.ca}", "tls-auth-clients no",
            f"dir {self.workdir}", 'save ""', "acllog-max-len 1024",
            *(["appendonly yes", "appendfsync always"] if self.appendonly
              else ["appendonly no"]), ""]))
        done = subprocess.run(
            [sys.executable, "-m", "scripts.redis_acl", "--out", str(conf)], cwd=ROOT,
            capture_output=True, text=True, timeout=60,
            env={"PATH": os.environ["PATH"], **self.env()})
        assert done.returncode == 0, done.stderr
        with conf.open("a") as out:  # the tests' own user: reads ACL LOG
            out.write(f"user {TESTS_USER} on >{self.passwords[TESTS_USER]} +@all ~* &*\n")
        self.proc = subprocess.Popen([shutil.which("redis-server") or "redis-server",
                                      str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT)
        client = self.client()

        def answers() -> bool:
            assert self.proc is not None and self.proc.poll() is None, "redis-server exited"
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        eventually(answers, 20, f"the TLS redis-server on port {self.port}", interval=0.05)
        client.close()
        return self

    def acl_log(self) -> list[dict[str, object]]:
        """What Redis refused since the last `acl_log_reset` (newest first)."""
        client = self.client()
        try:
            return [{k: (v.decode() if isinstance(v, bytes) else v) for k, v in e.items()}
                    for e in client.acl_log(count=1024)]
        finally:
            client.close()

    def acl_log_reset(self) -> None:
        client = self.client()
        try:
            client.acl_log_reset()
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)

    def restart(self) -> None:
        """Stop (Redis writes its append-only file) and start again, same users."""
        self.stop()
        (self.workdir / "redis.conf").unlink()
        self.start()
