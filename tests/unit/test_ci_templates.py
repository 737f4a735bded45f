"""The CI templates in ci/ validate against their published schemas, offline.

check-jsonschema ships the schemas vendored (``vendor.github-workflows``,
``vendor.gitlab-ci``); the runs below have every proxy pointed at a closed port,
so a schema fetched from the network would fail them.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

CI = Path(__file__).resolve().parents[2] / "ci"
GITHUB = CI / "github-actions.yml"
GITLAB = CI / "gitlab-ci.yml"
SCHEMAS = {GITHUB.name: "vendor.github-workflows", GITLAB.name: "vendor.gitlab-ci"}
_OFFLINE = {k: "http://127.0.0.1:9" for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")}


def validate(path: Path, schema: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k.lower() != "no_proxy"} | _OFFLINE
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema,
                           "--no-cache", str(path)],
                          capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL)


def load(path: Path) -> dict:
    return YAML(typ="safe").load(path.read_text())


@pytest.mark.parametrize("path", [GITHUB, GITLAB], ids=lambda p: p.name)
def test_templates_validate_against_their_schemas(path):
    result = validate(path, SCHEMAS[path.name])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok -- validation done" in result.stdout


BROKEN = {  # well-formed YAML that breaks the schema
    # a job needs runs-on
    GITHUB.name: ("    runs-on: ubuntu-24.04\n", ""),
    # parallel takes a number or {matrix: [...]}, nothing else
    GITLAB.name: ("    matrix:\n", "    matrixx:\n"),
}


@pytest.mark.parametrize("path", [GITHUB, GITLAB], ids=lambda p: p.name)
def test_an_invalid_file_fails_validation(path, tmp_path):
    old, new = BROKEN[path.name]
    text = path.read_text()
    assert old in text
    broken = tmp_path / path.name
    broken.write_text(text.replace(old, new, 1))
    result = validate(broken, SCHEMAS[path.name])
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Schema validation errors were encountered" in result.stdout + result.stderr


def test_github_workflow_does_what_the_readme_says():
    wf = load(GITHUB)
    job = wf["jobs"]["test"]
    matrix = job["strategy"]["matrix"]
    assert set(matrix["shard"]) == {"1/2", "2/2"} and "debian:bookworm" in matrix["kernel"]
    steps = job["steps"]
    runs = "\n".join(s.get("run", "") for s in steps)
    uses = {s["uses"].split("@")[0]: s for s in steps if "uses" in s}
    assert 'KERNEL=="kvm"' in runs and "udevadm trigger" in runs          # KVM on hosted runners
    assert "scripts/setup.sh" in runs
    assert uses["actions/cache"]["with"]["path"] == "${{ env.VMPROBE_CACHE }}"
    assert '--vmprobe-shard "${{ matrix.shard }}"' in runs and '--vmprobe-kernel "${{ matrix.kernel }}"' in runs
    assert "--junitxml results/junit.xml" in runs and "--vmprobe-results results" in runs
    artifact = uses["actions/upload-artifact"]
    assert artifact["if"] == "always()" and artifact["with"]["path"] == "results/"
    assert "vmprobe doctor" in runs


def test_gitlab_template_does_what_the_readme_says():
    job = load(GITLAB)["vmprobe"]
    (cell,) = job["parallel"]["matrix"]
    assert set(cell["SHARD"]) == {"1/2", "2/2"} and "debian:bookworm" in cell["KERNEL"]
    script = "\n".join(job["before_script"] + job["script"])
    assert "scripts/setup.sh" in script
    assert '--vmprobe-shard "$SHARD"' in script and '--vmprobe-kernel "$KERNEL"' in script
    assert job["artifacts"]["reports"]["junit"] == "results/junit.xml"
    assert job["artifacts"]["when"] == "always" and "results/" in job["artifacts"]["paths"]
    assert ".vmprobe-cache/" in job["cache"]["paths"]
