"""TLS for MQTT: mutual-TLS contexts (AWS IoT Core: port 8883, or 443 with ALPN x-amzn-mqtt-ca), the
private-key permission check, and a handshake probe that says *why* a broker refuses us.

We never read or log key material: paths go to OpenSSL, and errors name the file, not its contents.
"""
from __future__ import annotations

import os
import socket
import ssl
import stat
from pathlib import Path

from pi.errors import ConfigError

AWS_ALPN = "x-amzn-mqtt-ca"


def key_permission_problem(path: str | os.PathLike, what: str = "private key") -> str | None:
    """A message if the file can be read by anyone but its owner (None when it is private)."""
    mode = stat.S_IMODE(Path(path).stat().st_mode)
    if mode & 0o077:
        return (f"{what} is readable by other users (mode {mode:04o}); fix with: chmod 600 {path} "
                "(and chown it to the service user)")
    return None


def client_context(ca_file: str, cert_file: str | None, key_file: str | None, alpn: str | None) -> ssl.SSLContext:
    """A verifying client context presenting the device certificate; ConfigError names a bad file."""
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError({"mqtt.ca_file": f"cannot load the CA certificate: {exc}"}) from None
    if cert_file:
        try:
            ctx.load_cert_chain(cert_file, key_file)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError({"mqtt.cert_file": f"cannot load the device certificate/key pair: {exc}"}) from None
    if alpn:
        ctx.set_alpn_protocols([alpn])
    return ctx


def probe(host: str, port: int, ctx: ssl.SSLContext, timeout: float = 3.0) -> str | None:
    """Handshake with the broker and wait briefly for a rejection alert; None if it accepted us.

    With TLS 1.3 a broker that rejects the client certificate only says so after the handshake, in an
    alert on the first read: reading with a short timeout catches both cases.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            with ctx.wrap_socket(raw, server_hostname=host) as tls:
                tls.settimeout(0.5)
                try:
                    data = tls.recv(1)
                except (socket.timeout, TimeoutError):
                    return None  # no alert: the broker waits for our CONNECT, i.e. it accepted us
                return None if data else "the broker closed the connection after the TLS handshake"
    except ssl.SSLCertVerificationError as exc:
        return f"cannot verify the broker's certificate ({exc.verify_message}); is mqtt.ca_file the right CA?"
    except ssl.SSLError as exc:
        return f"the broker refused our TLS connection ({exc.reason or exc}); is the device certificate right?"
    except OSError as exc:
        return f"cannot reach {host}:{port} ({exc})"
