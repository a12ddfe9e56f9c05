"""`rat bench --tls`: the generator over TLS, against the asyncio peer with an ssl context.

A throwaway self-signed certificate is made with the `openssl` command (the
tests skip where there is none).  Checked: clean runs with and without
verification (`--tls-ca`), and clear failures for a plain TCP port and for a
certificate the CA file does not vouch for.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchkit import CHAT, FANOUT, IDLE, PEERS, PeerProcess, assert_clean, bench, run_ratbench

if shutil.which("openssl") is None:
    pytest.skip("no openssl command to make a certificate", allow_module_level=True)


def make_cert(folder: Path, name: str) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    args = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"]
    args += ["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"]
    subprocess.run(
        ["openssl", *args, "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    folder = tmp_path_factory.mktemp("tls")
    return {"server": make_cert(folder, "server"), "other": make_cert(folder, "other")}


@pytest.fixture
def tls_peer(certs: dict[str, tuple[Path, Path]]) -> Iterator[PeerProcess]:
    cert, key = certs["server"]
    cmd = [sys.executable, str(PEERS / "asyncio_server.py"), "--port", "0"]
    cmd += ["--tls-cert", str(cert), "--tls-key", str(key)]
    if importlib.util.find_spec("uvloop") is not None:
        cmd.append("--uvloop")  # the TLS peer of bench/compare.py: asyncio + ssl on uvloop
    peer = PeerProcess(cmd)
    yield peer
    peer.stop()


@pytest.mark.slow
@pytest.mark.parametrize("scenario", [CHAT, FANOUT, IDLE], ids=["chat", "fanout", "idle"])
def test_smoke_tls(tls_peer: PeerProcess, scenario: list[str]) -> None:
    s = bench(tls_peer.port, *scenario, "--tls", pid=tls_peer.proc.pid)
    assert_clean(s)
    assert s["proto"] == "line+tls"


@pytest.mark.slow
def test_connect_churn_over_tls(tls_peer: PeerProcess) -> None:
    """Every churn connection finishes its TLS handshake; newcomers get a line over TLS."""
    s = bench(tls_peer.port, "connect", "--tls", "--duration", "0.5", "--max-connects", "200",
              "--newcomer-every", "50")  # fmt: skip
    assert s["proto"] == "line+tls" and s["anomalies"] == 0
    assert s["churn"]["completed"] > 0 and not s["churn"]["failed"]
    assert s["newcomers"]["ok"] == s["newcomers"]["count"] > 0


def test_connect_tls_against_plain_tcp() -> None:
    """The beacon's handshake fails first: a sentence, exit 3."""
    peer = PeerProcess([sys.executable, str(PEERS / "asyncio_server.py"), "--port", "0"])
    try:
        proc = run_ratbench("connect", "--tls", "--port", str(peer.port), "--duration", "0.5",
                            "--setup-timeout", "2")  # fmt: skip
    finally:
        peer.stop()
    err = proc.stderr.decode()
    assert proc.returncode == 3, err
    assert "the beacon connection: the TLS handshake with" in err and "Traceback" not in err


def test_tls_verified_with_the_ca_file(
    tls_peer: PeerProcess, certs: dict[str, tuple[Path, Path]]
) -> None:
    s = bench(tls_peer.port, *CHAT, "--tls-ca", str(certs["server"][0]))
    assert_clean(s)


def test_tls_with_a_ca_that_does_not_vouch(
    tls_peer: PeerProcess, certs: dict[str, tuple[Path, Path]]
) -> None:
    proc = run_ratbench(
        "chat", "--port", str(tls_peer.port), "--tls-ca", str(certs["other"][0]), "--duration", "1"
    )
    err = proc.stderr.decode()
    assert proc.returncode == 3, err
    assert "the TLS handshake with 127.0.0.1:" in err and "CERTIFICATE_VERIFY_FAILED" in err
    assert "Traceback" not in err


def test_tls_against_plain_tcp() -> None:
    peer = PeerProcess([sys.executable, str(PEERS / "asyncio_server.py"), "--port", "0"])
    try:
        proc = run_ratbench(
            "chat", "--port", str(peer.port), "--tls", "--duration", "1", "--setup-timeout", "2"
        )
    finally:
        peer.stop()
    err = proc.stderr.decode()
    assert proc.returncode == 3, err
    assert "the TLS handshake with" in err and "Traceback" not in err
