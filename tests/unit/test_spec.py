"""vmprobe.kernels.spec / catalog: parsing kernel specs against the catalog."""
from __future__ import annotations

import pytest

from vmprobe.errors import ConfigError, SpecError
from vmprobe.kernels.catalog import load_catalog
from vmprobe.kernels.spec import DEFAULT_SPEC, KernelSpec, parse_spec

TOML = """
[trixie]
series = "6.12"
suites = ["trixie", "trixie-updates"]
security_suites = ["trixie-security"]
default_flavour = "cloud-amd64"
toolchain = { kind = "chroot", cc = "gcc-14", packages = ["gcc-14", "make"] }
check_valid_until = false

[trixie.flavours.cloud-amd64]
arch = "amd64"

[trixie.flavours.arm64]
arch = "arm64"

[trixie.packages]
meta = "linux-image-{flavour}"
images = ["linux-image-{abi}-{flavour}-unsigned"]
headers = ["linux-headers-{abi}-{flavour}", "linux-headers-{abi}-common"]
kbuild = "linux-kbuild-{series}"

[buster]
series = "4.19"
suites = ["buster"]
default_flavour = "amd64"
toolchain = { cc = "gcc-8" }

[buster.flavours.amd64]
arch = "amd64"

[buster.packages]
meta = "linux-image-{flavour}"
images = ["linux-image-{abi}-{flavour}"]
headers = ["linux-headers-{abi}-{flavour}"]
kbuild = "linux-kbuild-{series}"
"""


@pytest.fixture
def catalog(tmp_path):
    (tmp_path / "test.toml").write_text(TOML)
    return load_catalog(tmp_path)


# -- the shipped catalog ----------------------------------------------------------

def test_shipped_catalog_has_the_default():
    cat = load_catalog()
    assert {"bullseye", "bookworm"} <= set(cat.suites)
    bookworm = cat.suites["bookworm"]
    assert bookworm.series == "6.1"
    assert bookworm.default_flavour in bookworm.flavours
    assert "bookworm-security" in bookworm.security_suites
    assert parse_spec(DEFAULT_SPEC) == KernelSpec("debian", "bookworm", "cloud-amd64", None)


@pytest.mark.parametrize("text, want", [
    ("debian:bookworm", KernelSpec("debian", "bookworm", "cloud-amd64")),
    ("  debian:bookworm/rt-amd64\n", KernelSpec("debian", "bookworm", "rt-amd64")),
    ("debian:bookworm@6.1.0-13", KernelSpec("debian", "bookworm", "cloud-amd64", "6.1.0-13")),
    ("debian:bullseye/amd64@5.10.0-28", KernelSpec("debian", "bullseye", "amd64", "5.10.0-28")),
])
def test_valid_specs_shipped_catalog(text, want):
    assert parse_spec(text) == want


def test_str_is_canonical():
    assert str(parse_spec("debian:bookworm")) == "debian:bookworm/cloud-amd64"
    assert str(parse_spec("debian:bookworm@6.1.0-13")) == "debian:bookworm/cloud-amd64@6.1.0-13"
    assert parse_spec(str(parse_spec("debian:bullseye/amd64@5.10.0-28"))).abi == "5.10.0-28"


# -- a catalog of our own -----------------------------------------------------------

def test_tmp_catalog_loads_fields(catalog):
    trixie = catalog.suites["trixie"]
    assert trixie.suites == ("trixie", "trixie-updates")
    assert trixie.check_valid_until is False
    assert trixie.flavours["arm64"].arch == "arm64"
    assert trixie.packages.headers == ("linux-headers-{abi}-{flavour}", "linux-headers-{abi}-common")
    assert trixie.names("arm64", "6.12.9-1") == {"abi": "6.12.9-1", "flavour": "arm64", "series": "6.12"}
    buster = catalog.suites["buster"]
    assert buster.security_suites == ()
    assert buster.check_valid_until is True


def test_valid_specs_tmp_catalog(catalog):
    assert parse_spec("debian:trixie", catalog) == KernelSpec("debian", "trixie", "cloud-amd64")
    assert parse_spec("debian:trixie/arm64@6.12.9-1", catalog) == KernelSpec("debian", "trixie", "arm64", "6.12.9-1")
    assert parse_spec("debian:buster@4.19.0-27", catalog).flavour == "amd64"


def test_unknown_suite_lists_known_suites(catalog):
    with pytest.raises(SpecError) as info:
        parse_spec("debian:bookwrom", catalog)
    msg = str(info.value)
    assert "'bookwrom'" in msg
    assert "known suites: buster, trixie" in msg
    assert info.value.exit_code == 64


def test_unknown_flavour_lists_known_flavours(catalog):
    with pytest.raises(SpecError) as info:
        parse_spec("debian:trixie/i386", catalog)
    msg = str(info.value)
    assert "'i386'" in msg and "debian:trixie" in msg
    assert "known flavours: arm64, cloud-amd64" in msg


def test_unknown_flavour_in_shipped_catalog():
    with pytest.raises(SpecError, match=r"known flavours: 686, 686-pae, amd64, arm64, cloud-amd64, rt-amd64"):
        parse_spec("debian:bookworm/armhf")
    with pytest.raises(SpecError, match=r"known flavours: amd64, cloud-amd64, rt-amd64"):
        parse_spec("debian:trixie/arm64")


@pytest.mark.parametrize("text, arch", [("debian:bookworm/686", "i386"), ("debian:bookworm/686-pae", "i386"),
                                        ("debian:bookworm/arm64", "arm64")])
def test_foreign_arch_specs(text, arch):
    from vmprobe.kernels import load_catalog
    spec = parse_spec(text)
    assert load_catalog().suites[spec.suite].flavours[spec.flavour].arch == arch


@pytest.mark.parametrize("text", [
    "debian:", "debian:bookworm/", "debian:bookworm@", "debian:Bookworm", "debian:bookworm/cloud amd64",
    "debian:bookworm@-1", "debian:bookworm/cloud-amd64/extra", "debian:bookworm@6.1.0_13",
])
def test_malformed(text, catalog):
    with pytest.raises(SpecError, match=r"malformed kernel spec .*expected 'debian:<suite>\[/<flavour>\]\[@<abi>\]'"):
        parse_spec(text, catalog)


@pytest.mark.parametrize("text", ["bookworm", "ubuntu:jammy", "file:/boot/vmlinuz", ""])
def test_unknown_provider(text, catalog):
    with pytest.raises(SpecError, match=r"unknown kernel spec .*e\.g\. 'debian:bookworm'"):
        parse_spec(text, catalog)


def test_abi_of_another_series(catalog):
    with pytest.raises(SpecError) as info:
        parse_spec("debian:buster@5.10.0-28", catalog)
    msg = str(info.value)
    assert "'5.10.0-28'" in msg and "4.19" in msg and "debian:buster" in msg


def test_abi_of_another_series_shipped():
    with pytest.raises(SpecError, match=r"not a 6\.1 kernel"):
        parse_spec("debian:bookworm@5.10.0-28")


@pytest.mark.parametrize("abi", ["6.10.0-1", "6.12.9-1"])
def test_abi_series_prefix_is_not_enough(abi):
    with pytest.raises(SpecError):
        parse_spec(f"debian:bookworm@{abi}")


def test_catalog_missing_key_is_config_error(tmp_path):
    (tmp_path / "bad.toml").write_text('[sid]\nseries = "6.17"\nsuites = ["sid"]\n')
    with pytest.raises(ConfigError) as info:
        load_catalog(tmp_path)
    assert "bad.toml" in str(info.value)
    assert "suite 'sid' lacks key 'packages'" in str(info.value)


def test_empty_catalog_dir_is_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no kernel catalog"):
        load_catalog(tmp_path)


def test_matrix_specs_add_the_other_arches():
    from vmprobe.kernels.catalog import load_catalog, matrix_specs
    specs = matrix_specs(load_catalog())
    assert specs[:2] == ["debian:bullseye", "debian:bookworm"]
    assert "debian:bookworm/686" in specs and "debian:bookworm/arm64" in specs
    assert "debian:bookworm/686-pae" not in specs
