"""`rediss://` is verified TLS, for broker and backend alike, or a clear refusal.

A real redis-server speaking TLS only, on a free loopback port, its certificate signed
by a CA this module makes with `cryptography` (for `localhost` only). A worker and a
client over `rediss://localhost` with OCR_REDIS_TLS_CA_FILE run a job through the
project's transport and Celery's result backend; the same URL without that CA (the
system's CAs), or an address the certificate does not name, is refused by the stores,
the broker and the backend, and by the Node client.
"""

from __future__ import annotations

import datetime
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tasks.queue.app import sending_app
from tasks.settings import Settings
from tasks.state.connection import connect
from tests.harness import ROOT, Worker, eventually, fake_env, free_port, make_client
from tests.image_fixtures import png

pytestmark = pytest.mark.slow


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def make_certificates(folder: Path) -> tuple[Path, Path, Path, Path]:
    """(ca.pem, server.pem, server.key, other-ca.pem): a CA, a server cert for localhost."""
    now = datetime.datetime.now(datetime.UTC)
    files = []
    cas = []
    for name in ("ocr-test-ca", "another-ca"):
        key = _key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(key, hashes.SHA256()))
        cas.append((key, cert))
        files.append(_pem(folder / f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM)))
    ca_key, ca_cert = cas[0]
    server_key = _key()
    server = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
              .issuer_name(ca_cert.subject).public_key(server_key.public_key())
              .serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(minutes=5))
              .not_valid_after(now + datetime.timedelta(days=1))
              .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]),
                             critical=False)
              .sign(ca_key, hashes.SHA256()))
    server_pem = _pem(folder / "server.pem", server.public_bytes(serialization.Encoding.PEM))
    server_key_pem = _pem(folder / "server.key", server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return files[0], server_pem, server_key_pem, files[1]


class TlsRedis:
    """A redis-server that speaks TLS only (no plain port), clients not asked for certs."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ca, self.cert, self.key, self.other_ca = make_certificates(folder)
        self.port = free_port()
        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", "0",
             "--tls-port", str(self.port), "--bind", "127.0.0.1", "--dir", str(folder),
             "--save", "", "--appendonly", "no", "--tls-cert-file", str(self.cert),
             "--tls-key-file", str(self.key), "--tls-ca-cert-file", str(self.ca),
             "--tls-auth-clients", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        client = redis.Redis(host="localhost", port=self.port, ssl=True,
                             ssl_ca_certs=str(self.ca), socket_timeout=2)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        eventually(answers, 10, f"redis-server with TLS on {self.port}")

    def url(self, host: str = "localhost", db: int = 0) -> str:
        return f"rediss://{host}:{self.port}/{db}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    server = TlsRedis(tmp_path_factory.mktemp("tls"))
    yield server
    server.stop()


def test_a_job_runs_over_verified_tls(tls_redis: TlsRedis,
                                      tmp_path_factory: pytest.TempPathFactory) -> None:
    """Worker, stores, broker (the project's transport) and backend, all over rediss://."""
    env = {"REDIS_URL": tls_redis.url(db=1), "OCR_REDIS_TLS_CA_FILE": str(tls_redis.ca)}
    config = sending_app(Settings.from_env(env)).conf
    for key in ("broker_use_ssl", "redis_backend_use_ssl"):
        assert config[key]["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    worker = Worker(tmp_path_factory.mktemp("tls-worker") / "worker.log",
                    {**env, **fake_env()}).start()
    client = make_client(env["REDIS_URL"], **env)
    try:
        job = client.submit(png(150), filename="over-tls.png")
        result = client.wait([job], timeout=60)[job]
        assert result["status"] == "SUCCESS" and result["text"].startswith("fake 64x48")
        assert result["filename"] == "over-tls.png"
    finally:
        client.close()
        worker.stop()


@pytest.mark.parametrize(("host", "ca_of"), [("localhost", "other_ca"),
                                             ("127.0.0.1", "ca")])
def test_an_unverified_server_is_refused(tls_redis: TlsRedis, host: str, ca_of: str) -> None:
    """A certificate no trusted CA signed, or one that names another host: refused.

    By the stores (the connection factory), the broker (the project's transport,
    publishing) and Celery's backend; nothing is sent in the clear.
    """
    env = {"REDIS_URL": tls_redis.url(host), "OCR_REDIS_TLS_CA_FILE": str(getattr(tls_redis,
                                                                                    ca_of))}
    settings = Settings.from_env(env)
    with pytest.raises(redis.ConnectionError, match="certificate verify failed|match"):
        connect(settings.redis_target, patient=False).ping()
    app = sending_app(settings)
    app.conf.broker_connection_timeout = 5
    try:
        with pytest.raises(Exception, match="certificate verify failed|match") as refused, \
                app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1)
        assert "SSL" in type(refused.value).__name__ or "certificate" in str(refused.value)
        with pytest.raises(Exception, match="certificate verify failed|match"):
            app.backend.client.ping()
    finally:
        app.close()


def test_the_node_client_verifies_too(tls_redis: TlsRedis, tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the Node.js client is not run")
    (tmp_path / "scan.png").write_bytes(png(120))
    script = str(ROOT / "clients" / "node" / "ocr_client.js")
    refused = subprocess.run([node, script, "--no-wait", "--redis", tls_redis.url(),
                              str(tmp_path / "scan.png")], capture_output=True, text=True,
                             timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert refused.returncode == 5 and "cannot reach Redis" in refused.stderr
    assert "self-signed" in refused.stderr or "certificate" in refused.stderr
    sent = subprocess.run([node, script, "--no-wait", "--redis", tls_redis.url(db=2),
                           str(tmp_path / "scan.png")], capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin",
                                           "OCR_REDIS_TLS_CA_FILE": str(tls_redis.ca)})
    assert sent.returncode == 0, sent.stderr
    job_id = sent.stdout.split("\t")[0]
    store = connect(Settings.from_env({"REDIS_URL": tls_redis.url(db=2),
                                       "OCR_REDIS_TLS_CA_FILE": str(tls_redis.ca)}).redis_target)
    assert store.llen("ocr\x06\x163") == 1 and job_id in store.lindex("ocr\x06\x163", 0).decode()
