"""Fetching an uploaded video to a local file, within limits, without being turned against
the platform's own network.

``file://`` URIs must resolve (symlinks included) under configured roots. ``http(s)://``
hosts are resolved once; every address must be public unless its network is allow-listed
(no loopback, private, link-local such as the 169.254.169.254 metadata service, multicast
or reserved addresses), and the connection goes to the address that was checked, so a
second DNS answer cannot swap it. Every redirect is checked the same way, up to a cap.
Downloads stream to disk under a size cap, a connect timeout and a total deadline.
"""
from __future__ import annotations

import http.client
import ipaddress
import os
import socket
import ssl
import tempfile
import time
import urllib.parse
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

from worker.core import dead_letters
from worker.core.dead_letters import DeadLetter

_CHUNK = 1 << 16
_REDIRECTS = (301, 302, 303, 307, 308)


class Fetcher:
    """Resolves ``file://`` and ``http(s)://`` video URIs to a local file, within limits."""

    def __init__(self, max_bytes: int, timeout_s: float, file_roots: Sequence[str] = (),
                 schemes: Sequence[str] = ("file", "http", "https"),
                 allowed_networks: Sequence[str] = (), max_redirects: int = 3,
                 connect_timeout_s: float = 5.0,
                 resolve: Callable[[str, int], list[str]] | None = None):
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.file_roots = tuple(Path(r).resolve() for r in file_roots)
        self.schemes = frozenset(s.lower() for s in schemes)
        self.allowed_networks = tuple(ipaddress.ip_network(n, strict=False) for n in allowed_networks)
        self.max_redirects = max_redirects
        self._resolve = resolve or _resolve

    @contextmanager
    def fetch(self, uri: str) -> Iterator[Path]:
        scheme = self._check_scheme(uri)
        if scheme == "file":
            yield self._local(uri)
            return
        with tempfile.TemporaryDirectory(prefix="moderation-fetch-") as tmp:
            path = Path(tmp) / "video"
            self._download(uri, path)
            yield path

    def _check_scheme(self, uri: str) -> str:
        scheme = urllib.parse.urlsplit(uri).scheme.lower()
        if scheme not in self.schemes:
            raise DeadLetter(dead_letters.UNSUPPORTED_URI_SCHEME, f"scheme {scheme!r} is not allowed")
        return scheme

    def _local(self, uri: str) -> Path:
        parts = urllib.parse.urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise DeadLetter(dead_letters.URI_NOT_ALLOWED, f"file URI names a remote host {parts.netloc!r}")
        path = Path(urllib.parse.unquote(parts.path))
        if not self.file_roots:
            raise DeadLetter(dead_letters.URI_NOT_ALLOWED, "file:// URIs need media.file_roots to be configured")
        resolved = path.resolve()  # follows symlinks and '..': what is checked is what is read
        if not any(resolved.is_relative_to(root) for root in self.file_roots):
            raise DeadLetter(dead_letters.URI_NOT_ALLOWED, f"{path} is outside the allowed file roots")
        if not resolved.exists():
            raise DeadLetter(dead_letters.VIDEO_NOT_FOUND, f"no such file: {path}")
        if not resolved.is_file() or not os.access(resolved, os.R_OK):
            raise DeadLetter(dead_letters.VIDEO_UNREADABLE, f"not a readable file: {path}")
        size = resolved.stat().st_size
        if size > self.max_bytes:
            raise DeadLetter(dead_letters.VIDEO_TOO_LARGE, f"{size} bytes is over the {self.max_bytes}-byte limit")
        return resolved

    # --- http(s) ------------------------------------------------------------------------------

    def _address(self, host: str, port: int) -> str:
        """The one address to connect to, after checking every address the name resolves to."""
        try:
            addresses = self._resolve(host, port)
        except OSError as exc:
            raise DeadLetter(dead_letters.FETCH_FAILED, f"cannot resolve {host!r}: {exc}") from None
        if not addresses:
            raise DeadLetter(dead_letters.FETCH_FAILED, f"{host!r} has no address")
        for address in addresses:
            ip = ipaddress.ip_address(address)
            ip = getattr(ip, "ipv4_mapped", None) or ip
            public = ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified)
            if not public and not any(ip in net for net in self.allowed_networks):
                raise DeadLetter(dead_letters.URI_NOT_ALLOWED,
                                 f"{host!r} resolves to {ip}, a non-public address that is not allow-listed")
        return addresses[0]

    def _download(self, uri: str, path: Path) -> None:
        deadline = time.monotonic() + self.timeout_s
        for _ in range(self.max_redirects + 1):
            parts = urllib.parse.urlsplit(uri)
            scheme = self._check_scheme(uri)
            if scheme not in ("http", "https") or not parts.hostname:
                raise DeadLetter(dead_letters.URI_NOT_ALLOWED, f"cannot fetch {uri[:200]!r}")
            port = parts.port or (443 if scheme == "https" else 80)
            address = self._address(parts.hostname, port)
            connection = _PinnedConnection(scheme, parts.hostname, address, port, self.connect_timeout_s)
            try:
                location = self._get(connection, parts, path, deadline)
            except DeadLetter:
                raise
            except (socket.timeout, TimeoutError):
                raise DeadLetter(dead_letters.FETCH_TIMEOUT, f"no answer within the time limit from {parts.hostname}") from None
            except (OSError, http.client.HTTPException) as exc:
                raise DeadLetter(dead_letters.FETCH_FAILED, f"{type(exc).__name__}: {str(exc)[:200]}") from None
            finally:
                connection.close()
            if location is None:
                return
            uri = urllib.parse.urljoin(uri, location)
        raise DeadLetter(dead_letters.TOO_MANY_REDIRECTS, f"more than {self.max_redirects} redirects")

    def _get(self, connection: "_PinnedConnection", parts, path: Path, deadline: float) -> str | None:
        """GET into ``path``; returns the redirect location, or None when the body was saved."""
        target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        connection.request("GET", target, headers={"Accept-Encoding": "identity",
                                                   "User-Agent": "deepfake-moderation-worker"})
        sock = connection.sock  # http.client drops its reference once the body is read
        sock.settimeout(_remaining(deadline))
        response = connection.getresponse()
        if response.status in _REDIRECTS:
            location = response.getheader("Location")
            if not location:
                raise DeadLetter(dead_letters.FETCH_FAILED, f"HTTP {response.status} without a Location")
            return location
        if response.status in (404, 410):
            raise DeadLetter(dead_letters.VIDEO_NOT_FOUND, f"HTTP {response.status}")
        if response.status != 200:
            raise DeadLetter(dead_letters.FETCH_FAILED, f"HTTP {response.status}")
        declared = response.getheader("Content-Length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            raise DeadLetter(dead_letters.VIDEO_TOO_LARGE,
                             f"Content-Length {declared} is over the {self.max_bytes}-byte limit")
        total = 0
        with open(path, "wb") as out:
            while not response.isclosed():
                sock.settimeout(_remaining(deadline))
                chunk = response.read1(_CHUNK)
                if not chunk:
                    return None
                total += len(chunk)
                if total > self.max_bytes:
                    raise DeadLetter(dead_letters.VIDEO_TOO_LARGE, f"over the {self.max_bytes}-byte limit")
                out.write(chunk)
        return None


def _remaining(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise DeadLetter(dead_letters.FETCH_TIMEOUT, "the download deadline passed")
    return remaining


def _resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


class _PinnedConnection:
    """An HTTP(S) connection to an address checked beforehand; TLS still verifies the name."""

    def __init__(self, scheme: str, host: str, address: str, port: int, connect_timeout_s: float):
        if scheme == "https":
            self._conn = http.client.HTTPSConnection(host, port, timeout=connect_timeout_s,
                                                     context=ssl.create_default_context())
        else:
            self._conn = http.client.HTTPConnection(host, port, timeout=connect_timeout_s)
        self._conn._create_connection = (  # connect to the checked address, not a new lookup
            lambda _addr, timeout, source_address=None: socket.create_connection(
                (address, port), timeout, source_address))

    def request(self, *args, **kwargs):
        self._conn.request(*args, **kwargs)

    def getresponse(self):
        return self._conn.getresponse()

    @property
    def sock(self):
        return self._conn.sock

    def close(self):
        self._conn.close()
