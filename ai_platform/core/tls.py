"""TLS for gRPC between services and from every client: certificates read once, checked at start, made for a
deployment.

``AIP_TLS_CERT`` and ``AIP_TLS_KEY`` are this process's certificate and key (a server serves with them; a client
presents them, for mutual TLS); ``AIP_TLS_CA`` is the certificate authority a client trusts for the servers it
calls; ``AIP_TLS_CLIENT_CA``, on a server, makes TLS mutual: only clients with a certificate that CA signed may
connect. With none of them set, channels are plaintext, as before.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from ai_platform.core.settings import SettingsError


class TlsError(SettingsError):
    """A certificate or key that cannot be used; the message names the setting and the file."""


@dataclass(frozen=True)
class TlsConfig:
    """The PEM bytes of a process's TLS files (empty: not set)."""

    cert: bytes = b""
    key: bytes = b""
    ca: bytes = b""
    client_ca: bytes = b""

    @property
    def enabled(self) -> bool:
        return bool(self.cert or self.ca)

    @classmethod
    def load(cls, cert: str = "", key: str = "", ca: str = "", client_ca: str = "") -> TlsConfig:
        """Read the files named by the settings; TlsError naming the variable when one is missing or unusable."""
        if bool(cert) != bool(key):
            raise TlsError("AIP_TLS_CERT and AIP_TLS_KEY go together: set both (the certificate and its key)")
        files = {}
        for env, path in (("AIP_TLS_CERT", cert), ("AIP_TLS_KEY", key), ("AIP_TLS_CA", ca),
                          ("AIP_TLS_CLIENT_CA", client_ca)):
            try:
                files[env] = Path(path).read_bytes() if path else b""
            except OSError as exc:
                raise TlsError(f"{env}={path}: cannot read it: {exc.strerror or exc}") from None
        config = cls(files["AIP_TLS_CERT"], files["AIP_TLS_KEY"], files["AIP_TLS_CA"], files["AIP_TLS_CLIENT_CA"])
        config.check(cert, key, ca, client_ca)
        return config

    @classmethod
    def of(cls, settings: Any) -> TlsConfig:
        """The TLS files a settings object names (every settings class has the four)."""
        return cls.load(*(getattr(settings, f"tls_{name}", "") for name in ("cert", "key", "ca", "client_ca")))

    def check(self, cert_path: str = "", key_path: str = "", ca_path: str = "", client_ca_path: str = "") -> None:
        """At start rather than at the first handshake: PEM that parses, a key that matches its certificate, and
        certificates inside their validity."""
        if not (self.cert or self.ca or self.client_ca):
            return
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        now = datetime.datetime.now(datetime.UTC)
        certificates = []
        for env, path, data in (("AIP_TLS_CERT", cert_path, self.cert), ("AIP_TLS_CA", ca_path, self.ca),
                                ("AIP_TLS_CLIENT_CA", client_ca_path, self.client_ca)):
            if not data:
                continue
            try:
                loaded = x509.load_pem_x509_certificates(data)
            except ValueError as exc:
                raise TlsError(f"{env}={path}: not a PEM certificate: {exc}") from None
            for certificate in loaded:
                if certificate.not_valid_after_utc < now:
                    raise TlsError(f"{env}={path}: the certificate for {_subject(certificate)} expired on "
                                   f"{certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
                if certificate.not_valid_before_utc > now + datetime.timedelta(minutes=5):
                    raise TlsError(f"{env}={path}: the certificate for {_subject(certificate)} is not valid before "
                                   f"{certificate.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
            certificates.append((env, loaded))
        if self.key:
            try:
                private = serialization.load_pem_private_key(self.key, password=None)
            except (ValueError, TypeError) as exc:
                raise TlsError(f"AIP_TLS_KEY={key_path}: not an unencrypted PEM private key: {exc}") from None
            own = certificates[0][1][0]
            if own.public_key().public_numbers() != private.public_key().public_numbers():
                raise TlsError(f"AIP_TLS_KEY={key_path} is not the key of the certificate AIP_TLS_CERT={cert_path}")

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """TLS for a gRPC server (mutual when a client CA is set); None: plaintext."""
        if not self.cert:
            return None
        return grpc.ssl_server_credentials([(self.key, self.cert)], root_certificates=self.client_ca or None,
                                           require_client_auth=bool(self.client_ca))

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """TLS for a client channel: trust the CA (the system's roots when unset), present our certificate."""
        if not self.enabled:
            return None
        return grpc.ssl_channel_credentials(root_certificates=self.ca or None, private_key=self.key or None,
                                            certificate_chain=self.cert or None)


def _subject(certificate: Any) -> str:
    return certificate.subject.rfc4514_string() or "(no subject)"


PLAINTEXT = TlsConfig()
HANDSHAKE_WORDS = ("ssl", "tls", "handshake", "certificate", "verification", "hostname", "wrong_version_number",
                   "http2 frame", "socket closed")


def explain_unavailable(details: str, tls: bool) -> str:
    """A peer's UNAVAILABLE, with what TLS has to do with it when the words say a handshake failed."""
    lowered = details.lower()
    if any(word in lowered for word in HANDSHAKE_WORDS):
        side = ("this side uses TLS (AIP_TLS_CA / AIP_TLS_CERT): the peer's certificate was not accepted, or the "
                "peer does not speak TLS") if tls else ("this side speaks plaintext: the peer may want TLS (set "
                                                        "AIP_TLS_CA)")
        return f"{details} [TLS: {side}]"
    return details


# -- certificates for a deployment ----------------------------------------------------------------------------------

def make_certificates(directory: Path, hosts: dict[str, list[str]], days: int = 365,
                      expired: bool = False) -> dict[str, dict[str, Path]]:
    """A private CA (``ca.pem``) and, for each name in ``hosts``, a certificate and key (``NAME.pem``,
    ``NAME-key.pem``) valid for the DNS names and IP addresses listed, usable both to serve and as a client.

    ``aip certs`` writes these for a deployment (and the container tests for theirs); keys are readable by their
    owner only. ``expired``: certificates that expired yesterday (for tests of what happens then).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    start, end = (now - datetime.timedelta(days=days + 1), now - datetime.timedelta(days=1)) if expired else (
        now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days))

    def write(path: Path, data: bytes, mode: int) -> Path:
        path.write_bytes(data)
        path.chmod(mode)
        return path

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ai-platform CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    ca_path = write(directory / "ca.pem", ca.public_bytes(serialization.Encoding.PEM), 0o644)
    made: dict[str, dict[str, Path]] = {}
    for name, names in hosts.items():
        key = ec.generate_private_key(ec.SECP256R1())
        alternatives: list[x509.GeneralName] = []
        for entry in names or [name]:
            try:
                alternatives.append(x509.IPAddress(ipaddress.ip_address(entry)))
            except ValueError:
                alternatives.append(x509.DNSName(entry))
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])).issuer_name(ca_name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
        made[name] = {
            "cert": write(directory / f"{name}.pem", certificate.public_bytes(serialization.Encoding.PEM), 0o644),
            "key": write(directory / f"{name}-key.pem", key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()), 0o600),
            "ca": ca_path,
        }
    return made
