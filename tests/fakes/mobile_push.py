"""Push test helpers: credentials made on the fly and a clock that tests move.

Real-format keys (a Google service account with an RSA key, an APNs .p8 key on P-256),
generated with ``cryptography``, so the channels sign with exactly what production gives
them and the fakes verify with the public halves.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa


@dataclass(frozen=True)
class ServiceAccountKey:
    """A service account's RSA key and identity; :meth:`info` is its key JSON."""

    private_key: rsa.RSAPrivateKey = field(repr=False)
    client_email: str = "broadcaster@p.iam.gserviceaccount.com"
    private_key_id: str = "0123456789abcdef0123456789abcdef01234567"
    project_id: str = "p"

    @property
    def public_key(self) -> rsa.RSAPublicKey:
        return self.private_key.public_key()

    @property
    def private_pem(self) -> str:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()

    def info(self, token_uri: str) -> dict[str, str]:
        """The key JSON as the Google Cloud console downloads it."""
        return {
            "type": "service_account",
            "project_id": self.project_id,
            "private_key_id": self.private_key_id,
            "private_key": self.private_pem,
            "client_email": self.client_email,
            "client_id": "100000000000000000001",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/x",
            "universe_domain": "googleapis.com",
        }

    def json(self, token_uri: str) -> str:
        return json.dumps(self.info(token_uri), indent=2)

    def write(self, path: Path, token_uri: str) -> Path:
        path.write_text(self.json(token_uri), encoding="utf-8")
        return path


def make_service_account(project_id: str = "p") -> ServiceAccountKey:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ServiceAccountKey(
        private_key=key,
        client_email=f"broadcaster@{project_id}.iam.gserviceaccount.com",
        project_id=project_id,
    )


@dataclass(frozen=True)
class P8Key:
    """An APNs authentication key (ES256) as Apple hands it out, with its ids."""

    private_key: ec.EllipticCurvePrivateKey = field(repr=False)
    key_id: str = "ABC123DEFG"
    team_id: str = "DEF123GHIJ"

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self.private_key.public_key()

    @property
    def pem(self) -> str:
        """The ``AuthKey_<key id>.p8`` content: PKCS#8 PEM."""
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()

    def write(self, directory: Path) -> Path:
        path = directory / f"AuthKey_{self.key_id}.p8"
        path.write_text(self.pem, encoding="utf-8")
        return path


def make_p8_key() -> P8Key:
    return P8Key(private_key=ec.generate_private_key(ec.SECP256R1()))


class ManualClock:
    """The time a channel and its fake both read (``now=clock``); tests move it."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.value = start

    def __call__(self) -> float:
        return self.value

    def advance(self, seconds: float) -> None:
        self.value += seconds
