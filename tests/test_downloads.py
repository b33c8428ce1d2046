"""ms_vit.downloads against real servers on 127.0.0.1: an https one with a certificate made here (openssl), trusted
through SSL_CERT_FILE, and plain http ones; a stalled server; redirects to every kind of target."""
import hashlib
import http.server
import os
import ssl
import subprocess
import threading
import time

import pytest

from ms_vit.downloads import DownloadError, download

BODY = bytes(range(256)) * 4096                          # 1 MiB


class Handler(http.server.BaseHTTPRequestHandler):
    """/file: BODY; /cut: half of it after announcing all; /stall: headers, then silence; /to?URL: a 302 to URL;
    anything else 404."""

    def do_GET(self):
        if self.path == "/file":
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)
        elif self.path == "/cut":
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY[:len(BODY) // 2])
            self.close_connection = True
        elif self.path == "/stall":
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY[:1000])
            self.wfile.flush()
            self.server.release.wait(20)                  # bounded: the test releases it, or 20 s pass
        elif self.path.startswith("/to?"):
            self.send_response(302)
            self.send_header("Location", self.path[4:])
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_error(404, "Not Found")

    def log_message(self, *args):
        pass


def serve(host="127.0.0.1", context=None):
    httpd = http.server.ThreadingHTTPServer((host, 0), Handler)
    httpd.daemon_threads = True
    httpd.release = threading.Event()
    if context:
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    scheme = "https" if context else "http"
    return httpd, f"{scheme}://{host}:{httpd.server_address[1]}"


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """An https server (certificate for 127.0.0.1 made with openssl), two http servers (127.0.0.1 and 127.0.0.2),
    and SSL_CERT_FILE pointing at the certificate."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    made = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                           "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
                           "-out", str(cert)], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    started = [serve(context=context), serve(), serve("127.0.0.2")]
    yield dict(https=started[0][1], http=started[1][1], other_http=started[2][1], cert=str(cert),
               httpds=[s[0] for s in started])
    for httpd, _ in started:
        httpd.release.set()
        httpd.shutdown()


@pytest.fixture
def trusted(servers, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", servers["cert"])
    monkeypatch.delenv("MS_VIT_ALLOW_HTTP_MIRROR", raising=False)
    return servers


# (URL built from the servers, allow_http, expected: the sha256 of BODY or a fragment of the one-line error)
CASES = [
    ("{https}/file", False, "ok"),
    ("{https}/to?{https}/file", False, "ok"),                                    # https -> https: followed
    ("{https}/to?{http}/file", False, "downloads never leave https"),            # https -> http: refused
    ("{https}/to?{http}/file", True, "downloads never leave https"),             # even with http mirrors allowed
    ("{https}/to?file:///etc/passwd", True, "downloads never leave https"),
    ("{http}/file", False, "plain http: ms_vit downloads over https only"),
    ("{http}/file", True, "ok"),                                                  # a local http mirror, allowed
    ("{http}/to?{http}/file", True, "ok"),                                        # within the same mirror
    ("{http}/to?{other_http}/file", True, "downloads never leave https"),        # to another http host: refused
    ("{https}/missing", False, "HTTP 404 Not Found"),
    ("{https}/cut", False, f"cut off (524,288 of {len(BODY):,} bytes)"),
    ("https://127.0.0.1:9/file", False, "Connection refused"),                    # nothing listens there
    ("ftp://127.0.0.1/file", True, "not an https:// or file:// URL"),
]


@pytest.mark.parametrize("url, allow_http, expected", CASES)
def test_urls_and_redirects(trusted, tmp_path, url, allow_http, expected):
    target = tmp_path / "out"
    url = url.format(**trusted)
    if expected == "ok":
        assert download(url, str(target), allow_http=allow_http) == hashlib.sha256(BODY).hexdigest()
        assert target.read_bytes() == BODY
    else:
        with pytest.raises(DownloadError) as caught:
            download(url, str(target), allow_http=allow_http)
        assert expected in str(caught.value) and "\n" not in str(caught.value)


def test_the_environment_switch_allows_http_mirrors(trusted, tmp_path, monkeypatch):
    with pytest.raises(DownloadError, match="MS_VIT_ALLOW_HTTP_MIRROR=1"):
        download(trusted["http"] + "/file", str(tmp_path / "a"))
    monkeypatch.setenv("MS_VIT_ALLOW_HTTP_MIRROR", "1")
    download(trusted["http"] + "/file", str(tmp_path / "a"))


def test_an_unknown_certificate_is_refused(servers, tmp_path, monkeypatch):
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    with pytest.raises(DownloadError, match="TLS certificate not verified"):
        download(servers["https"] + "/file", str(tmp_path / "out"))


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_a_stalled_server_ends_in_a_timeout(trusted, tmp_path, scheme):
    """Headers and 1,000 bytes, then silence: the read times out after `timeout` s (the server would wait 20 s)."""
    start = time.monotonic()
    with pytest.raises(DownloadError, match="no data for 1 s"):
        download(trusted[scheme] + "/stall", str(tmp_path / "out"), timeout=1.0, allow_http=True)
    assert time.monotonic() - start < 5                  # 1 s of silence, plus the connection


def test_file_urls_and_size_caps(trusted, tmp_path):
    source = tmp_path / "local.bin"
    source.write_bytes(BODY)
    assert download(source.as_uri(), str(tmp_path / "copy")) == hashlib.sha256(BODY).hexdigest()
    with pytest.raises(DownloadError, match="more than the 1,000 allowed"):
        download(trusted["https"] + "/file", str(tmp_path / "big"), max_bytes=1000)
    with pytest.raises(DownloadError, match="No such file"):
        download((tmp_path / "absent.zip").as_uri(), str(tmp_path / "none"))
    assert not os.path.exists(tmp_path / "none") or os.path.getsize(tmp_path / "none") == 0
