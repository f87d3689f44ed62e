"""HTTPS through the real command, ``broadcaster channels test``, in processes of their
own: a webhook receiver with a trustme certificate, trusted through ``SSL_CERT_FILE`` (the
system's trust store otherwise), posted to several times over. Each process exits with the
command's own status, never the abort pyreqwest's threads can cause in CPython 3.11's
finalization (:func:`channels.http_transport.exit_now`; the probe in
``tests/integration/test_http_transport.py`` exits right after its send, where that abort
was most likely).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.fakes.http import serve
from tests.fakes.webhook import WebhookReceiver

SECRET = "whsec-https-exit-0123456789abcdef"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, WebhookReceiver]]:
    """The receiver's HTTPS base URL, the CA file that trusts it, and the receiver."""
    directory = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(directory / "cert.pem"))
    cert.private_key_pem.write_to_path(str(directory / "key.pem"))
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    receiver = WebhookReceiver(SECRET)
    with serve(
        receiver.app, certfile=str(directory / "cert.pem"), keyfile=str(directory / "key.pem")
    ) as url:
        yield url, directory / "ca.pem", receiver


def _send(url: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``broadcaster channels test hook`` in a process of its own; ``SSL_CERT_FILE`` only
    as ``env`` gives it."""
    config = tmp_path / "config.yaml"
    config.write_text(
        f"""
database:
  url: sqlite+aiosqlite:///{tmp_path / "store.db"}
delivery:
  channels: [hook]
channels:
  hook:
    type: webhook
    url: {url}/hooks/broadcaster
    secret: {SECRET}
""",
        encoding="utf-8",
    )
    command = [sys.executable, "-m", "broadcaster", "channels", "test", "hook"]
    return subprocess.run(
        [*command, "--to", "acct-1", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**{k: v for k, v in os.environ.items() if k != "SSL_CERT_FILE"}, **env},
        check=False,
    )


def test_https_sends_are_verified_and_exit_zero(
    tls: tuple[str, Path, WebhookReceiver], tmp_path: Path
) -> None:
    url, ca_file, receiver = tls
    before = len(receiver.accepted)
    for _ in range(4):
        done = _send(url, tmp_path, SSL_CERT_FILE=str(ca_file))
        assert done.returncode == 0, done.stderr
        assert "Fatal Python error" not in done.stderr
    assert len(receiver.accepted) == before + 4  # signed, verified, distinct


def test_an_untrusted_certificate_is_a_clean_failure(
    tls: tuple[str, Path, WebhookReceiver], tmp_path: Path
) -> None:
    url, _ca_file, receiver = tls
    before = len(receiver.requests)
    failed = _send(url, tmp_path)  # the system's trust store alone
    assert failed.returncode == 1, failed.stderr  # the command's "did not deliver", not SIGABRT
    assert "invalid peer certificate" in failed.stderr
    assert "Fatal Python error" not in failed.stderr
    assert len(receiver.requests) == before  # refused in the handshake, nothing posted
