"""
Tests for config ``listen``: any Twisted server endpoint, HTTPS with a
certificate the test makes, start-up errors naming the key; and the real
server over HTTPS with tokens (end to end).
"""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import json
import os
import re
import ssl
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase

from hq.auth import token_digest
from hq.config import ConfigError, config_from_dict
from hq.site import AccessLogSite
from hq.tap import FatalStartError, listen_on_endpoint
from tests.serverprocess import ServerProcess, wait_for

_LISTENING_TLS = re.compile(r"listening on (https?)://([\d.]+):(\d+)")


def make_certificate(directory: str) -> tuple[str, str]:
    """
    Write a self-signed certificate for 127.0.0.1 and localhost, and its key,
    as PEM files in ``directory``; return their paths (key, certificate).
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hq test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path = os.path.join(directory, "key.pem")
    cert_path = os.path.join(directory, "cert.pem")
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    with open(cert_path, "wb") as f:
        f.write(certificate.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


class ListenConfigTests(SynchronousTestCase):
    """
    ``listen`` and ``addr`` in the config.
    """

    def test_addr_and_listen_together_are_refused(self) -> None:
        """Both set: start-up stops naming both keys."""
        with self.assertRaises(ConfigError) as caught:
            config_from_dict({"addr": "127.0.0.1:1", "listen": "tcp:1"})
        self.assertIn("'listen' and 'addr' are both set", str(caught.exception))

    def test_listen_alone_is_taken(self) -> None:
        """listen alone is kept as written; addr keeps its default."""
        config = config_from_dict({"listen": "tcp:19901:interface=127.0.0.1"})
        self.assertEqual(
            (config.listen, config.addr), ("tcp:19901:interface=127.0.0.1", "0.0.0.0:19900")
        )
        with self.assertRaises(ConfigError):
            config_from_dict({"listen": " "})
        with self.assertRaises(ConfigError):
            config_from_dict({"listen": 19900})

    def test_bad_description_is_a_start_error_naming_listen(self) -> None:
        """An unknown endpoint type or a missing key file stops start-up naming 'listen'."""
        site = AccessLogSite(None, None)
        for description in ("nonsense:1", "ssl:0:privateKey=/nonexistent/key.pem"):
            with self.assertRaises(FatalStartError) as caught:
                listen_on_endpoint(reactor, description, site)
            self.assertTrue(str(caught.exception).startswith(f"'listen' {description!r}"))

    def test_port_in_use_is_a_start_error(self) -> None:
        """A port in use stops start-up with the reason."""
        site = AccessLogSite(None, None)
        port = listen_on_endpoint(reactor, "tcp:0:interface=127.0.0.1", site)
        self.addCleanup(port.stopListening)
        taken = port.getHost().port  # type: ignore[attr-defined]
        with self.assertRaises(FatalStartError) as caught:
            listen_on_endpoint(reactor, f"tcp:{taken}:interface=127.0.0.1", site)
        self.assertIn(f"cannot listen on tcp:{taken}:interface=127.0.0.1:", str(caught.exception))


class _Server(ServerProcess):
    """
    A server whose config file is written as given (``listen`` instead of
    ``addr``, ``[[tokens]]`` tables), found by its http or https address.
    """

    def __init__(self, directory: str, top: dict[str, Any], tables: str = "") -> None:
        super().__init__(directory)
        values: dict[str, Any] = {
            "data_dir": os.path.join(self.directory, "data"),
            "log_file": self.log_path,
            "access_log_file": os.path.join(self.directory, "access.log"),
            "dispatchers": 1,
            "shutdown_timeout": 2,
            **top,
        }
        with open(self.config_path, "w") as f:
            for key, value in values.items():
                f.write(f"{key} = {json.dumps(value)}\n")
            f.write(tables)
        self.scheme = ""

    def _address(self) -> tuple[str, str] | None:
        assert self.process is not None
        if self.process.poll() is not None:
            output = self.process.stdout.read().decode() if self.process.stdout else ""
            raise AssertionError(f"server exited with {self.process.returncode}: {output}")
        match = _LISTENING_TLS.search(self.log_text())
        if match is None:
            return None
        self.scheme = match.group(1)
        return match.group(2), match.group(3)


class HTTPSServerTests(SynchronousTestCase):
    """
    The real server (``hq serve``) on an ``ssl:`` endpoint, with tokens.
    """

    def test_https_with_tokens_end_to_end(self) -> None:
        """HTTPS answers with the test's certificate; tokens hold over it; health stays open."""
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        key, cert = make_certificate(directory)
        token = "tls-test-token"
        server = _Server(
            directory,
            {"listen": f"ssl:0:privateKey={key}:certKey={cert}:interface=127.0.0.1"},
            f'[[tokens]]\nname = "reader"\nrole = "read"\nsha256 = "{token_digest(token)}"\n',
        )
        server.start()
        self.addCleanup(server.stop)
        self.assertEqual(server.scheme, "https")
        port = int(server.base.rsplit(":", 1)[1])
        context = ssl.create_default_context(cafile=cert)

        def get(path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
            connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
            try:
                connection.request("GET", path, headers=headers or {})
                response = connection.getresponse()
                return response.status, json.loads(response.read())
            finally:
                connection.close()

        status, body = get("/stats", {"Authorization": f"Bearer {token}"})
        self.assertEqual(status, 200, body)
        self.assertIn("numStoredJobs", body)
        self.assertEqual(get("/stats")[0], 401)
        self.assertEqual(get("/health")[0], 200)
        # Plain HTTP on the TLS port is no answer from the API.
        with self.assertRaises((http.client.HTTPException, OSError)):
            plain = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                plain.request("GET", "/stats")
                plain.getresponse().read()
                raise http.client.HTTPException("answered plain HTTP")  # pragma: no cover
            finally:
                plain.close()
        access = os.path.join(server.directory, "access.log")
        wait_for(lambda: "token=reader" in open(access).read(), 10, "the access log line")
        self.assertNotIn(token, open(access).read() + server.log_text())

    def test_malformed_token_entry_stops_start_up_naming_it(self) -> None:
        """A bad role in [[tokens]]: exit 1 with a message naming the entry."""
        directory = self.mktemp()
        server = _Server(
            directory,
            {"listen": "tcp:0:interface=127.0.0.1"},
            f'[[tokens]]\nname = "ci"\nrole = "root"\nsha256 = "{token_digest("x")}"\n',
        )
        server.start(wait=False)
        self.addCleanup(server.stop)
        code, output = server.wait_exit()
        self.assertEqual(code, 1, output)
        self.assertIn("'tokens' entry 0 ('ci') has the role 'root'", output)

    def test_plain_tcp_listen(self) -> None:
        """listen = "tcp:0:interface=127.0.0.1" serves plain HTTP like addr."""
        server = _Server(self.mktemp(), {"listen": "tcp:0:interface=127.0.0.1"})
        server.start()
        self.addCleanup(server.stop)
        self.assertEqual(server.scheme, "http")
        status, body = server.request("GET", "/stats")
        self.assertEqual(status, 200, body)
