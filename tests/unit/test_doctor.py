"""vmprobe doctor's archive probe against real local HTTP servers, and its report format."""
from __future__ import annotations

import http.server
import threading

import pytest

from vmprobe.runs import doctor


class _Archive(http.server.BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_HEAD(self):  # noqa: N802 (http.server's naming)
        type(self).seen.append(self.path)
        self.send_response(200 if "/dists/bookworm/" in self.path else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    _Archive.seen = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Archive)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


@pytest.fixture
def no_proxy_env(monkeypatch, tmp_path):
    for key in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(key, raising=False)
    parts = tmp_path / "apt.conf.d"
    parts.mkdir()
    conf = tmp_path / "apt.conf"
    conf.write_text(f'Dir::Etc::parts "{parts}";\n')
    monkeypatch.setenv("APT_CONFIG", str(conf))   # the host's apt proxy settings stay out of it
    return parts / "proxy.conf"


def test_reachable_and_missing_suites(server, no_proxy_env):
    ok, detail = doctor._reach(server + "/debian/", "bookworm")
    assert ok and detail.startswith(f"{server}/debian/dists/bookworm/InRelease: HTTP 200 in ")
    ok, detail = doctor._reach(server + "/debian", "buster")
    assert not ok and detail == f"{server}/debian/dists/buster/InRelease: HTTP 404"
    assert _Archive.seen == ["/debian/dists/bookworm/InRelease", "/debian/dists/buster/InRelease"]


def test_unreachable_mirror(no_proxy_env):
    ok, detail = doctor._reach("http://127.0.0.1:9/debian", "bookworm")
    assert not ok and detail.startswith("http://127.0.0.1:9/debian/dists/bookworm/InRelease: ")
    assert "refused" in detail.lower()


def test_apt_proxy_is_used(server, no_proxy_env):
    """apt's Acquire::http::Proxy is honoured: the request goes to the proxy, whole URL and all."""
    no_proxy_env.write_text(f'Acquire::http::Proxy "{server}/";\n')
    ok, detail = doctor._reach("http://mirror.invalid/debian", "bookworm")
    assert ok, detail
    assert detail.endswith(f"via apt's proxy {server}/")
    assert _Archive.seen == ["http://mirror.invalid/debian/dists/bookworm/InRelease"]


def test_file_mirrors(tmp_path):
    (tmp_path / "dists" / "bookworm").mkdir(parents=True)
    (tmp_path / "dists" / "bookworm" / "InRelease").write_text("signed\n")
    assert doctor._reach(f"file:{tmp_path}", "bookworm")[0]
    assert not doctor._reach(f"file://{tmp_path}", "trixie")[0]


def test_report_and_exit_code():
    checks = [doctor.Check("gdb", "ok", "GNU gdb 13.1"),
              doctor.Check("kvm", "warn", "KVM unusable: hang; TCG in use", "use bare metal"),
              doctor.Check("make", "fail", "not found", "apt-get install make")]
    text = doctor.format_checks(checks)
    assert text.splitlines() == [
        "ok    gdb   GNU gdb 13.1",
        "warn  kvm   KVM unusable: hang; TCG in use",
        "            → use bare metal",
        "fail  make  not found",
        "            → apt-get install make",
        "3 checks: 1 ok, 1 warn, 1 fail",
    ]
    assert doctor.exit_code(checks) == 65 and doctor.exit_code(checks[:2]) == 0
    assert doctor._one_line("a\n\n  b  \n") == "a / b"
