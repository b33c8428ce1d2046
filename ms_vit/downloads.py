"""Downloads: one URL streamed into one file, its sha256 computed on the way, every wait bounded.

* ``https://`` with the certificate verified (Python's default context; ``SSL_CERT_FILE`` names other roots).
  ``http://`` only when the caller allows it (a local mirror the user named: ``MS_VIT_ALLOW_HTTP_MIRROR=1``).
* Redirects never leave ``https``: a redirect to ``http://`` (or any other scheme) is refused; from an allowed
  ``http://`` mirror, only to the same host and port.
* Every wait has a bound: the connection and each read time out after ``timeout`` seconds without data ("no data
  for 30 s"), so a stalled server ends the download instead of hanging it.
* A body shorter than its ``Content-Length`` is "cut off"; a body longer than ``max_bytes`` is refused.
* ``file://`` URLs (and nothing else) are read from the local disk, with the same hashing.

``DownloadError`` carries one line (refused, HTTP 404 Not Found, no data for 30 s, cut off at N of M bytes, ...);
the caller says what to do about it. A progress line is drawn on stderr when it is a terminal.
"""
import hashlib
import os
import socket
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Optional

ALLOW_HTTP = "MS_VIT_ALLOW_HTTP_MIRROR"
# Host base URL -> the environment variable that names a mirror of it
HOSTS = {
    "https://huggingface.co": "HF_ENDPOINT",
    "https://download.mindspore.cn": "MS_VIT_MINDSPORE_MIRROR",
    "https://download-mindspore.osinfra.cn": "MS_VIT_MINDSPORE_MIRROR",
    "https://mindspore-website.obs.cn-north-4.myhuaweicloud.com": "MS_VIT_MINDSPORE_MIRROR",   # the tutorial's data
    "https://storage.googleapis.com": "MS_VIT_GOOGLE_MIRROR",
    "https://download.pytorch.org": "MS_VIT_PYTORCH_MIRROR",
}
TIMEOUT = 30.0                          # seconds without a byte before a download is given up
_BLOCK = 1 << 20


class DownloadError(OSError):
    """A download that did not arrive whole; the message is one line saying why."""


def http_allowed() -> bool:
    """Whether plain ``http://`` mirrors are allowed (``MS_VIT_ALLOW_HTTP_MIRROR=1``)."""
    return os.environ.get(ALLOW_HTTP, "0") == "1"


def check_url(url: str, allow_http: bool) -> None:
    """Raise ``DownloadError`` unless ``url`` is ``https://`` (or ``http://`` with ``allow_http``, or ``file://``)."""
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme == "https" or scheme == "file" or (scheme == "http" and allow_http):
        return
    if scheme == "http":
        raise DownloadError(f"the URL is plain http: ms_vit downloads over https only (set {ALLOW_HTTP}=1 to "
                            "allow a local http mirror you trust)")
    raise DownloadError(f"{scheme or 'no'} scheme: not an https:// or file:// URL")


class _StayOnHttps(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to https (or, from an allowed http mirror, to the same host and port)."""

    def __init__(self, origin: str, allow_http: bool):
        super().__init__()
        self.origin, self.allow_http = urllib.parse.urlsplit(origin), allow_http

    def http_error_302(self, req, fp, code, msg, headers):
        location = headers.get("location") or headers.get("uri")
        if location:                                   # checked before urllib looks at it
            newurl = urllib.parse.urljoin(req.full_url, location)
            target = urllib.parse.urlsplit(newurl)
            same_mirror = (self.allow_http and self.origin.scheme == "http" and target.scheme == "http"
                           and target.netloc == self.origin.netloc)
            if target.scheme.lower() != "https" and not same_mirror:
                raise DownloadError(f"redirected to {newurl}: refused (downloads never leave https)")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _open(url: str, timeout: float, allow_http: bool):
    opener = urllib.request.build_opener(_StayOnHttps(url, allow_http),
                                         urllib.request.HTTPSHandler(context=ssl.create_default_context()))
    request = urllib.request.Request(url, headers={"User-Agent": "ms_vit"})
    return opener.open(request, timeout=timeout)       # the timeout holds for the connection and for every read


def _reason(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, DownloadError):
        return str(exc)
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}".strip()
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
        exc = exc.reason
    elif isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    if isinstance(exc, DownloadError):
        return str(exc)
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return f"no data for {timeout:g} s"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not verified: {exc.verify_message}"
    if isinstance(exc, ConnectionRefusedError):
        return "Connection refused"
    if isinstance(exc, socket.gaierror):
        return f"host not found ({exc.strerror})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return " ".join(str(exc).split()) or type(exc).__name__


class _Progress:
    """``  12.3 of 330.2 MB (4.1 MB/s)`` redrawn on stderr at most twice a second, when it is a terminal."""

    def __init__(self, label: str, total: Optional[int]):
        self.label, self.total, self.start, self.last = label, total, time.monotonic(), 0.0
        self.shown = sys.stderr.isatty()

    def update(self, done: int, final: bool = False) -> None:
        now = time.monotonic()
        if not self.shown or (now - self.last < 0.5 and not final):
            return
        self.last = now
        of = f" of {self.total / 1e6:.1f}" if self.total else ""
        rate = done / max(now - self.start, 1e-6) / 1e6
        sys.stderr.write(f"\r{self.label}: {done / 1e6:.1f}{of} MB ({rate:.1f} MB/s)" + ("\n" if final else ""))
        sys.stderr.flush()


def mirrored(url: str) -> str:
    """``url`` with its host replaced by the mirror its environment variable (``HOSTS``) names, if set."""
    for host, variable in HOSTS.items():
        mirror = os.environ.get(variable)
        if mirror and url.startswith(host + "/"):
            return mirror.rstrip("/") + url[len(host):]
    return url


def download(url: str, path: str, timeout: float = TIMEOUT, allow_http: Optional[bool] = None,
             max_bytes: Optional[int] = None, label: str = "") -> str:
    """Stream ``url`` into ``path`` (created or replaced; the caller stages it); returns the file's sha256.

    Raises ``DownloadError`` (one line) for a refused URL or redirect, an HTTP error, a stall of ``timeout``
    seconds, a body cut short of its ``Content-Length`` or longer than ``max_bytes``."""
    allow_http = http_allowed() if allow_http is None else allow_http
    check_url(url, allow_http)
    digest, done = hashlib.sha256(), 0
    try:
        if urllib.parse.urlsplit(url).scheme.lower() == "file":
            source, total = open(urllib.request.url2pathname(urllib.parse.urlsplit(url).path), "rb"), None
        else:
            source = _open(url, timeout, allow_http)
            length = source.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        if max_bytes is not None and total is not None and total > max_bytes:
            source.close()
            raise DownloadError(f"{url} is {total:,} bytes, more than the {max_bytes:,} allowed")
        progress = _Progress(label or os.path.basename(path), total)
        with source, open(path, "wb") as out:
            while True:
                block = source.read(_BLOCK)
                if not block:
                    break
                done += len(block)
                if max_bytes is not None and done > max_bytes:
                    raise DownloadError(f"{url} sends more than the {max_bytes:,} bytes allowed")
                digest.update(block)
                out.write(block)
                progress.update(done)
        progress.update(done, final=True)
    except Exception as exc:                       # urllib, socket, ssl and http.client errors: one line
        if isinstance(exc, DownloadError):
            raise
        if type(exc).__name__ == "IncompleteRead" and total:
            raise DownloadError(f"cut off ({done:,} of {total:,} bytes)") from None
        raise DownloadError(_reason(exc, timeout)) from None
    if total is not None and done < total:
        raise DownloadError(f"cut off ({done:,} of {total:,} bytes)")
    return digest.hexdigest()
