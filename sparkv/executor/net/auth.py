"""The KV link's optional shared secret: where it comes from and when it is required.

A secret is never a command-line value (it would show in `ps`): it comes from a file named by
`SPARKV_KV_SECRET_FILE` (or the server's `--secret-file`), or from `SPARKV_KV_SECRET` itself. A server
bound to anything but loopback requires one; the launcher makes a fresh random one for every server it
starts in a network namespace and hands it to the child through its environment.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import stat
from pathlib import Path

ENV_SECRET = "SPARKV_KV_SECRET"
ENV_SECRET_FILE = "SPARKV_KV_SECRET_FILE"
MIN_SECRET_BYTES = 16


class SecretError(ValueError):
    """A secret that cannot be read or is too short."""


def read_secret_file(path: str | Path) -> bytes:
    """The secret in `path` (surrounding whitespace stripped); SecretError when unreadable or short."""
    p = Path(path)
    try:
        mode = p.stat().st_mode
        raw = p.read_bytes().strip()
    except OSError as exc:
        raise SecretError(f"cannot read the secret file {p}: {exc.strerror or exc}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretError(f"secret file {p} is readable by others (mode {stat.filemode(mode)}): chmod 600 it")
    return _checked(raw, str(p))


def _checked(raw: bytes, where: str) -> bytes:
    if len(raw) < MIN_SECRET_BYTES:
        raise SecretError(f"the secret from {where} has {len(raw)} bytes; at least {MIN_SECRET_BYTES} are needed")
    return raw


def secret_from_env(file: str | Path | None = None) -> bytes | None:
    """The secret from `file`, else SPARKV_KV_SECRET_FILE, else SPARKV_KV_SECRET; None when none is set."""
    file = file or os.environ.get(ENV_SECRET_FILE) or None
    if file:
        return read_secret_file(file)
    value = os.environ.get(ENV_SECRET)
    return _checked(value.encode(), f"${ENV_SECRET}") if value else None


def new_secret() -> bytes:
    """A fresh random secret (hex, so it survives an environment variable)."""
    return secrets.token_hex(32).encode()


def is_loopback(host: str) -> bool:
    """True for loopback addresses and 'localhost'; False for anything else, wildcards included."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_wildcard(host: str) -> bool:
    return host in ("", "0.0.0.0", "::")
