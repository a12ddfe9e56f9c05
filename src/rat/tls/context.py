"""The server's TLS settings: a certificate and key, loaded into an `ssl.SSLContext`.

`load_context(cert, key)` builds the context every new TLS connection is
made from: `ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)` (the
standard library's current choice of ciphers and options, no client
certificates asked for) with TLS 1.2 as the oldest version accepted.

A file the server cannot use is the user's mistake, not a bug: it becomes a
`CertificateError` whose message is one line naming the file and what is
wrong with it (missing, unreadable, not PEM, an encrypted key, a key that
belongs to another certificate).  OpenSSL's own message ("PEM lib") does
not say which of the two files it choked on, so the certificate is checked
on its own first.

`Certificates` holds the current context and swaps it on `reload()`
(SIGHUP): connections made from then on use the new certificate, those
already open keep the context (and the certificate) they started with,
because an `SSLObject` keeps a reference to its own context.
"""

from __future__ import annotations

import logging
import ssl

log = logging.getLogger("rat")

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


class CertificateError(Exception):
    """A certificate or key file rat cannot use; the message is one line for the user."""


class _PassphraseNeeded(Exception):
    pass


def _no_passphrase() -> str:
    # Called by OpenSSL for an encrypted key: a server cannot stop and ask.
    raise _PassphraseNeeded


def _reason(err: ssl.SSLError) -> str:
    reason = getattr(err, "reason", None)
    return str(reason).lower().replace("_", " ") if reason else str(err)


def load_context(cert: str, key: str) -> ssl.SSLContext:
    """A server-side context for `cert` and `key` (PEM files); see the module docstring.

    Raises `CertificateError` with a one-line message naming the file.
    """
    for path in (cert, key):
        try:
            with open(path, "rb") as f:
                f.read(1)
        except OSError as err:
            raise CertificateError(f"cannot read {path}: {err.strerror or err}") from None
    # The certificate alone first, so that a failure below is the key's.
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        probe.load_verify_locations(cafile=cert)
    except ssl.SSLError as err:
        raise CertificateError(f"{cert}: not a PEM certificate ({_reason(err)})") from None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = MINIMUM_VERSION
    try:
        context.load_cert_chain(cert, key, password=_no_passphrase)
    except _PassphraseNeeded:
        raise CertificateError(
            f"{key}: the key is encrypted (rat cannot ask for a passphrase;"
            " decrypt it with: openssl pkey -in KEY -out KEY.plain)"
        ) from None
    except ssl.SSLError as err:
        reason = _reason(err)
        if "mismatch" in reason:
            raise CertificateError(f"{key}: this key does not belong to {cert}") from None
        raise CertificateError(f"{key}: not a PEM private key ({reason})") from None
    except OSError as err:
        raise CertificateError(f"cannot read {key}: {err.strerror or err}") from None
    return context


class Certificates:
    """The current TLS context, and its reload (SIGHUP)."""

    def __init__(self, cert: str, key: str) -> None:
        self.cert = cert
        self.key = key
        self.context = load_context(cert, key)  # raises CertificateError
        self.reloads = 0

    def reload(self) -> bool:
        """Load the files again; on failure keep the old context and log why."""
        try:
            context = load_context(self.cert, self.key)
        except CertificateError as err:
            log.error("TLS reload failed, keeping the old certificate: %s", err)
            return False
        self.context = context
        self.reloads += 1
        log.info("TLS certificate reloaded from %s (new connections use it)", self.cert)
        return True
