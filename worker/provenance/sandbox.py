"""Reading content credentials in a child process, with a size cap, a deadline and a memory cap.

A C2PA manifest is untrusted input handed to native code (c2pa-rs, through c2pa-python).
Whatever it does (panics, loops, allocates without bound) must cost one upload's credentials,
never the worker and never the upload's verdict. So the reader runs in a child process
(``python -m worker.provenance.sandbox``) that caps its own address space; the worker kills it
at the deadline and starts a fresh one for the next upload. Every failure becomes a
``Credentials`` record in state ``unreadable`` with a reason, and the video goes on to its
verdict.

Remote manifests (a manifest URL in the file's XMP instead of an embedded store) are never
fetched: c2pa-python's ``remote_manifest_fetch`` and ``ocsp_fetch`` are off, and such a file
is reported ``unreadable`` with reason ``remote_manifest_refused`` and the URL, so an
operator can see them and fetch through their own channels if they choose.

The child answers each request with one JSON line; nothing it sends is unpickled, and the
worker checks every field (``Credentials.from_json``).
"""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from worker.core import credentials as cr
from worker.core.credentials import Credentials
from worker.media.children import IdleChildren
from worker.provenance.store import locate

_MAX_ANSWER = 1 << 20


class TrustAnchorsError(ValueError):
    """The configured trust-anchor bundle cannot be used."""


def check_trust_anchors(path: str) -> None:
    """Refuse, at start-up, a bundle that is missing or holds no certificate."""
    if not path:
        return
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise TrustAnchorsError(f"provenance.trust_anchors: cannot read {path}: {exc}") from None
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise TrustAnchorsError(f"provenance.trust_anchors: {path} holds no PEM certificate")


@dataclass(frozen=True)
class ReaderSettings:
    trust_anchors: str = ""            # a PEM bundle's path; empty: nothing is ever trusted
    max_manifest_bytes: int = 16 * 1024 * 1024
    timeout_s: float = 30.0
    memory_bytes: int = 1024 ** 3      # address space for reading, above what the child maps at start

    @classmethod
    def from_config(cls, provenance) -> "ReaderSettings":
        """From the config's ``[provenance]`` section; the trust anchors are checked."""
        check_trust_anchors(provenance.trust_anchors)
        return cls(trust_anchors=str(Path(provenance.trust_anchors).resolve()) if provenance.trust_anchors else "",
                   max_manifest_bytes=provenance.max_manifest_bytes, timeout_s=provenance.timeout_s,
                   memory_bytes=provenance.memory_bytes)

    def to_json(self) -> str:
        return json.dumps({"trust_anchors": self.trust_anchors, "memory_bytes": self.memory_bytes})


class CredentialReader:
    """Reads an upload's content credentials; ``read`` never raises for anything in the file."""

    def __init__(self, settings: ReaderSettings, command: list[str] | None = None):
        """``command``: what runs as the child (tests stand a scripted one in)."""
        self.settings = settings
        self._command = command or [sys.executable, "-m", "worker.provenance.sandbox", settings.to_json()]
        self._idle = IdleChildren()

    def read(self, path: Path) -> Credentials:
        try:
            where = locate(path)
        except OSError as exc:
            return cr.unreadable(cr.MANIFEST_MALFORMED, f"the file could not be read: {exc}")
        if where.reader_format is None:
            return Credentials(cr.ABSENT, reason=cr.UNSUPPORTED_CONTAINER,
                               message="C2PA has no binding for this container format")
        if where.malformed:
            return cr.unreadable(cr.MANIFEST_MALFORMED, where.malformed, manifest_bytes=where.manifest_bytes)
        if not where.maybe_store:
            return Credentials(cr.ABSENT)
        if where.manifest_bytes is not None and where.manifest_bytes > self.settings.max_manifest_bytes:
            return cr.unreadable(cr.MANIFEST_TOO_LARGE, f"the manifest store is {where.manifest_bytes} bytes, "
                                 f"over provenance.max_manifest_bytes ({self.settings.max_manifest_bytes})",
                                 manifest_bytes=where.manifest_bytes)
        child = self._idle_child()
        deadline = time.monotonic() + self.settings.timeout_s
        request = {"path": str(path), "format": where.reader_format, "manifest_bytes": where.manifest_bytes}
        try:
            answer = child.ask(request, deadline)
        except _Failed as failure:
            child.kill()
            return cr.unreadable(failure.reason, failure.message, manifest_bytes=where.manifest_bytes)
        except BaseException:
            child.kill()
            raise
        self._idle.put(child)
        return answer

    def _idle_child(self) -> "_Child":
        return self._idle.take(lambda: _Child(self._command))

    def close(self) -> None:
        self._idle.close()


class _Failed(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


class _Child:
    def __init__(self, command: list[str]):
        self.proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            cwd=str(Path(__file__).resolve().parents[2]), start_new_session=True)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                pipe.close()
            except OSError:
                pass

    def quiet(self) -> bool:
        """Alive, and nothing waiting on its stdout."""
        return self.proc.poll() is None and not select.select([self.proc.stdout], [], [], 0)[0]

    def ask(self, request: dict, deadline: float) -> Credentials:
        try:
            self.proc.stdin.write(json.dumps(request).encode() + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise self._died() from None
        line = self._read_line(deadline)
        try:
            return Credentials.from_json(json.loads(line))
        except ValueError as exc:  # not JSON, not UTF-8, or not a record it could have sent
            raise _Failed(cr.READER_CRASHED, f"the credentials reader sent a malformed answer ({exc})") from None

    def _read_line(self, deadline: float) -> bytes:
        line = b""
        while b"\n" not in line:
            if len(line) > _MAX_ANSWER:
                raise _Failed(cr.READER_CRASHED, "the credentials reader sent an oversized answer")
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.proc.stdout], [], [], remaining)[0]:
                raise _Failed(cr.READER_TIMEOUT, "reading the credentials did not finish before "
                              "provenance.timeout_s; reader killed")
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                raise self._died()
            line += chunk
        head, _, rest = line.partition(b"\n")
        if rest:
            raise _Failed(cr.READER_CRASHED, "the credentials reader sent more than one answer")
        return head

    def _died(self) -> _Failed:
        code = self.proc.wait()
        how = f"signal {-code}" if code < 0 else f"exit code {code}"
        return _Failed(cr.READER_CRASHED, f"the credentials reader died ({how})")


# The child.

def _context(trust_anchors: str):
    """c2pa-python's settings: nothing fetched over the network; the operator's anchors are the
    whole trust set (they replace any the SDK ships), and without any, trust is not checked,
    so a good signature is ``valid`` and never ``trusted``. A time-stamp authority is not
    checked against a list: the signing time is reported as the manifest's token gives it."""
    import c2pa

    verify = {"verify_after_reading": True, "remote_manifest_fetch": False, "ocsp_fetch": False,
              "verify_trust": bool(trust_anchors), "verify_timestamp_trust": False}
    settings: dict = {"verify": verify}
    if trust_anchors:
        settings["trust"] = {"trust_anchors": Path(trust_anchors).read_text()}
    return c2pa.Context.from_dict(settings)


def read_in_process(path: Path, reader_format: str, context, trusted: bool,
                    manifest_bytes: int | None = None) -> Credentials:
    """What the child does for one file (also used where no isolation is wanted, in tests)."""
    import c2pa

    try:
        with open(path, "rb") as stream:
            reader = c2pa.Reader(reader_format, stream, context=context)
            try:
                if not reader.is_embedded():
                    return cr.unreadable(cr.REMOTE_MANIFEST_REFUSED, "the manifest is remote; not fetched",
                                         remote_url=reader.get_remote_url())
                return cr.summarise(reader.get_validation_state(), reader.get_validation_results(),
                                    reader.get_active_manifest(), trust_configured=trusted,
                                    manifest_bytes=manifest_bytes)
            finally:
                reader.close()
    except c2pa.C2paError.ManifestNotFound:
        return Credentials(cr.ABSENT)
    except c2pa.C2paError.NotSupported as exc:
        return Credentials(cr.ABSENT, reason=cr.UNSUPPORTED_CONTAINER, message=cr._clip(str(exc)))
    except MemoryError:
        return cr.unreadable(cr.READER_OUT_OF_MEMORY, "reading the credentials ran out of provenance.memory_bytes",
                             manifest_bytes=manifest_bytes)
    except c2pa.C2paError as exc:
        message = str(exc)
        if isinstance(exc, c2pa.C2paError.RemoteManifest) or message.startswith("Remote:"):
            # c2pa-python 0.38 raises the base class, "Remote: must fetch remote manifests from url …"
            url = message.split(" from url ", 1)[1].strip() if " from url " in message else None
            return cr.unreadable(cr.REMOTE_MANIFEST_REFUSED, "the manifest is remote; not fetched",
                                 remote_url=url and cr._clip(url))
        return cr.unreadable(cr.MANIFEST_MALFORMED, f"{type(exc).__name__.lstrip('_')}: {exc}",
                             manifest_bytes=manifest_bytes)
    except OSError as exc:
        return cr.unreadable(cr.MANIFEST_MALFORMED, f"the file could not be read: {exc}")


def _mapped_bytes() -> int:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _serve(settings: dict) -> None:
    import resource

    context = _context(settings["trust_anchors"])  # loads c2pa's library before the cap
    if settings["memory_bytes"] > 0:
        limit = _mapped_bytes() + settings["memory_bytes"]
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    out = sys.stdout.buffer
    for line in sys.stdin.buffer:
        request = json.loads(line)
        try:
            answer = read_in_process(Path(request["path"]), request["format"], context,
                                     bool(settings["trust_anchors"]), request.get("manifest_bytes"))
        except Exception as exc:  # c2pa-python itself failed on this file: report, and go on
            answer = cr.unreadable(cr.READER_CRASHED, f"the reader failed: {type(exc).__name__}: {exc}")
        out.write(json.dumps(answer.to_json()).encode() + b"\n")
        out.flush()


if __name__ == "__main__":
    _serve(json.loads(sys.argv[1]))
