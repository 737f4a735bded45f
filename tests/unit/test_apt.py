"""vmprobe.kernels.apt: finding the host's Debian mirror in its apt configuration."""
from __future__ import annotations

import pytest

from vmprobe import config
from vmprobe.errors import ConfigError
from vmprobe.kernels.apt import (
    DEFAULT_KEYRING,
    Mirrors,
    SourceEntry,
    mirrors,
    parse_deb822,
    parse_one_line,
    pick_mirrors,
)

KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"

DEBIAN_SOURCES = f"""\
# Modernized from /etc/apt/sources.list
Types: deb
URIs: http://deb.debian.org/debian/
Suites: bookworm bookworm-updates
Components: main non-free-firmware
Signed-By: {KEYRING}

Types: deb
URIs: http://deb.debian.org/debian-security/
Suites: bookworm-security
Components: main non-free-firmware
Signed-By: {KEYRING}
"""


@pytest.fixture(autouse=True)
def no_user_config(monkeypatch, tmp_path):
    monkeypatch.setenv("VMPROBE_CONFIG", str(tmp_path / "no-such-config.toml"))
    monkeypatch.delenv("VMPROBE_DEBIAN_MIRROR", raising=False)
    monkeypatch.delenv("VMPROBE_DEBIAN_SECURITY_MIRROR", raising=False)
    config._config_file.cache_clear()
    yield
    config._config_file.cache_clear()


def _etc(tmp_path, main: str | None = None, **parts: str):
    etc = tmp_path / "etc-apt"
    (etc / "sources.list.d").mkdir(parents=True)
    if main is not None:
        (etc / "sources.list").write_text(main)
    for name, text in parts.items():
        (etc / "sources.list.d" / name.replace("__", ".")).write_text(text)
    return etc


# -- one-line format ------------------------------------------------------------------

def test_one_line_basic_and_options():
    text = f"""\
# deb http://commented.example/debian bookworm main
deb http://deb.debian.org/debian bookworm main contrib   # trailing comment
deb-src http://deb.debian.org/debian bookworm main
deb [arch=amd64 signed-by={KEYRING}] http://mirror.example/debian/ bookworm-updates main
deb [ arch=amd64,i386 trusted=yes ] http://other.example/debian bookworm main

deb http://incomplete.example/debian
"""
    assert parse_one_line(text) == [
        SourceEntry("http://deb.debian.org/debian", ("bookworm",), None),
        SourceEntry("http://mirror.example/debian/", ("bookworm-updates",), KEYRING),
        SourceEntry("http://other.example/debian", ("bookworm",), None),
    ]


def test_one_line_tab_separated():
    assert parse_one_line("deb\thttp://deb.debian.org/debian\tbookworm\tmain\n") == [
        SourceEntry("http://deb.debian.org/debian", ("bookworm",), None)]


# -- deb822 -----------------------------------------------------------------------------

def test_deb822_default_debian12_file():
    assert parse_deb822(DEBIAN_SOURCES) == [
        SourceEntry("http://deb.debian.org/debian/", ("bookworm", "bookworm-updates"), KEYRING),
        SourceEntry("http://deb.debian.org/debian-security/", ("bookworm-security",), KEYRING),
    ]


def test_deb822_multiline_fields_case_and_comments():
    text = """\
types: deb deb-src
URIs:
 http://a.example/debian
 http://b.example/debian/
# a comment in the middle
Suites: bookworm
\tbookworm-updates
Components: main
"""
    assert parse_deb822(text) == [
        SourceEntry("http://a.example/debian", ("bookworm", "bookworm-updates"), None),
        SourceEntry("http://b.example/debian/", ("bookworm", "bookworm-updates"), None),
    ]


def test_deb822_inline_key_falls_back():
    text = """\
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 mQINBGPL0BUBEADmW5NdOOHwPIJlgPu6JDcKw/NZJPR8lsD9K7UgrF6nc+m
 =abcd
 -----END PGP PUBLIC KEY BLOCK-----
"""
    assert parse_deb822(text) == [SourceEntry("http://deb.debian.org/debian", ("bookworm",), None)]


def test_deb822_disabled_and_src_only_skipped():
    text = """\
Types: deb
URIs: http://disabled.example/debian
Suites: bookworm
Components: main
Enabled: no

Types: deb-src
URIs: http://src.example/debian
Suites: bookworm
Components: main

Types: deb
URIs: http://enabled.example/debian
Suites: bookworm
Components: main
Enabled: yes
"""
    assert [e.uri for e in parse_deb822(text)] == ["http://enabled.example/debian"]


def test_deb822_signed_by_path_on_continuation_line():
    text = f"Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nSigned-By:\n {KEYRING}\n"
    assert parse_deb822(text)[0].signed_by == KEYRING


# -- picking ------------------------------------------------------------------------------

def test_pick_mirrors_ignores_non_debian_suites():
    entries = [
        SourceEntry("https://ppa.launchpadcontent.net/x/y/ubuntu", ("jammy",)),
        SourceEntry("https://deb.nodesource.com/node_20.x", ("nodistro",)),
        SourceEntry("http://archive.ubuntu.com/ubuntu", ("jammy-security",)),
        SourceEntry("http://deb.debian.org/debian-security", ("bookworm-security",)),
        SourceEntry("http://deb.debian.org/debian", ("bookworm", "bookworm-updates")),
        SourceEntry("http://second.example/debian", ("trixie",)),
    ]
    debian, security = pick_mirrors(entries)
    assert debian.uri == "http://deb.debian.org/debian"
    assert security.uri == "http://deb.debian.org/debian-security"


def test_pick_mirrors_old_security_layout_and_sid():
    debian, security = pick_mirrors([
        SourceEntry("http://security.debian.org/debian-security", ("buster/updates",)),
        SourceEntry("http://deb.debian.org/debian", ("sid",)),
    ])
    assert debian.uri == "http://deb.debian.org/debian"
    assert security.uri == "http://security.debian.org/debian-security"


def test_pick_mirrors_nothing():
    assert pick_mirrors([]) == (None, None)
    assert pick_mirrors([SourceEntry("http://archive.ubuntu.com/ubuntu", ("noble", "noble-updates"))]) == (None, None)


# -- mirrors() over a fake /etc/apt ------------------------------------------------------

def test_mirrors_from_deb822(tmp_path):
    etc = _etc(tmp_path, main="# See /etc/apt/sources.list.d/debian.sources\n", debian__sources=DEBIAN_SOURCES)
    assert mirrors(etc) == Mirrors("http://deb.debian.org/debian", "http://deb.debian.org/debian-security", KEYRING)


def test_mirrors_from_one_line_with_third_party_after(tmp_path):
    etc = _etc(tmp_path,
               main=("deb http://ftp.de.debian.org/debian/ bookworm main\n"
                     "deb http://security.debian.org/debian-security bookworm-security main\n"),
               **{"vscode__list": "deb [arch=amd64 signed-by=/etc/apt/keyrings/ms.gpg] "
                                  "https://packages.microsoft.com/repos/code stable main\n",
                  "docker__list": "deb [signed-by=/etc/apt/keyrings/docker.asc] "
                                  "https://download.docker.com/linux/debian bookworm stable\n",
                  "notes__txt": "deb http://ignored.example/debian bookworm main\n"})
    m = mirrors(etc)
    assert m.debian == "http://ftp.de.debian.org/debian"
    assert m.security == "http://security.debian.org/debian-security"
    assert m.keyring == DEFAULT_KEYRING


def test_mirrors_disabled_entry_and_third_party_only(tmp_path):
    disabled = DEBIAN_SOURCES.replace("Types: deb\nURIs: http://deb.debian.org/debian/",
                                      "Types: deb\nEnabled: no\nURIs: http://deb.debian.org/debian/")
    etc = _etc(tmp_path, nodesource__list="deb https://deb.nodesource.com/node_20.x nodistro main\n",
               debian__sources=disabled)
    with pytest.raises(ConfigError) as info:
        mirrors(etc)
    assert "VMPROBE_DEBIAN_MIRROR" in str(info.value)
    assert str(etc) in str(info.value)
    assert info.value.exit_code == 65


def test_mirrors_no_apt_at_all(tmp_path):
    with pytest.raises(ConfigError, match="no Debian archive found"):
        mirrors(tmp_path / "missing")


def test_mirrors_security_missing(tmp_path):
    etc = _etc(tmp_path, main="deb http://deb.debian.org/debian bookworm main\n")
    assert mirrors(etc) == Mirrors("http://deb.debian.org/debian", None, DEFAULT_KEYRING)


def test_env_overrides(tmp_path, monkeypatch):
    etc = _etc(tmp_path, debian__sources=DEBIAN_SOURCES)
    monkeypatch.setenv("VMPROBE_DEBIAN_MIRROR", "http://local-mirror.lan/debian/")
    monkeypatch.setenv("VMPROBE_DEBIAN_SECURITY_MIRROR", "http://local-mirror.lan/debian-security//")
    m = mirrors(etc)
    assert m.debian == "http://local-mirror.lan/debian"
    assert m.security == "http://local-mirror.lan/debian-security"
    assert m.keyring == KEYRING  # still the host entry's keyring


def test_env_override_without_host_entries(tmp_path, monkeypatch):
    monkeypatch.setenv("VMPROBE_DEBIAN_MIRROR", "http://local-mirror.lan/debian")
    m = mirrors(_etc(tmp_path))
    assert m == Mirrors("http://local-mirror.lan/debian", None, DEFAULT_KEYRING)


def test_config_file_override(tmp_path, monkeypatch):
    cfg = tmp_path / "config.toml"
    cfg.write_text('[debian]\nmirror = "http://from-config.lan/debian"\n'
                   'security_mirror = "http://from-config.lan/security"\n')
    monkeypatch.setenv("VMPROBE_CONFIG", str(cfg))
    config._config_file.cache_clear()
    m = mirrors(_etc(tmp_path, debian__sources=DEBIAN_SOURCES))
    assert (m.debian, m.security) == ("http://from-config.lan/debian", "http://from-config.lan/security")
    monkeypatch.setenv("VMPROBE_DEBIAN_MIRROR", "http://env-wins.lan/debian")
    assert mirrors(_etc(tmp_path / "2", debian__sources=DEBIAN_SOURCES)).debian == "http://env-wins.lan/debian"


def test_third_party_with_debian_codename_listed_first(tmp_path):
    etc = _etc(tmp_path, **{
        "archive_uri-https_download_docker_com_linux_debian-bookworm__list":
            "deb [arch=amd64 signed-by=/etc/apt/keyrings/docker.asc] "
            "https://download.docker.com/linux/debian bookworm stable\n",
        "debian__sources": DEBIAN_SOURCES,
    })
    m = mirrors(etc)
    assert m.debian == "http://deb.debian.org/debian"
    assert m.keyring == KEYRING
