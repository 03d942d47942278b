"""A non-editable install (a wheel: `pip install .`, the Docker images) has no checkout
around it, yet `insight train` must find its default config and the shipped tiny policy:
the wheel carries them as package data (setup.py) and insight.config resolves against
that copy."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from insight.config import REPO_ROOT, load_config, resolve_config_path

SHIPPED = ["configs/tiny.yaml", "configs/gsm8k.yaml", "configs/math.yaml",
           "checkpoints/tiny-arith/config.json", "checkpoints/tiny-arith/model.safetensors",
           "checkpoints/tiny-arith/tokenizer.json"]


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory) -> Path:
    """The project built as a wheel and installed (without dependencies) into a folder
    that is not the checkout."""
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp / "dist"), str(REPO_ROOT)], check=True, cwd=tmp)
    (wheel,) = (tmp / "dist").glob("insight_rlvr-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                    "--target", str(tmp / "site"), str(wheel)], check=True, cwd=tmp)
    return wheel


@pytest.mark.slow
def test_the_wheel_carries_the_default_config_and_the_tiny_policy(installed_wheel):
    names = set(zipfile.ZipFile(installed_wheel).namelist())
    for rel in SHIPPED:
        assert f"insight/shipped/{rel}" in names, rel
    assert not any(n.startswith(("configs/", "checkpoints/", "tests/")) for n in names)


@pytest.mark.slow
def test_the_installed_package_resolves_them_from_any_directory(installed_wheel, tmp_path):
    site = installed_wheel.parent.parent / "site"
    probe = ("import json; from insight.config import load_config as L; c = L(); "
             "g = L('configs/gsm8k.yaml'); p = c.resolved_policy_path(); "
             "print(json.dumps([str(p), (p / 'config.json').is_file(), c.name, g.name]))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, check=True, text=True,
                         capture_output=True, env={"PYTHONPATH": str(site), "PATH": ""})
    policy, has_weights, name, gsm8k = json.loads(out.stdout)
    assert Path(policy) == site / "insight" / "shipped" / "checkpoints" / "tiny-arith"
    assert has_weights and name == "tiny" and gsm8k == "gsm8k"


def test_in_a_checkout_the_repository_files_are_used(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                  # not the checkout's directory
    assert resolve_config_path(None) == REPO_ROOT / "configs" / "tiny.yaml"
    assert resolve_config_path("configs/math.yaml") == REPO_ROOT / "configs" / "math.yaml"
    assert load_config().resolved_policy_path() == REPO_ROOT / "checkpoints" / "tiny-arith"
    own = tmp_path / "configs" / "math.yaml"    # a file of the user's own wins
    own.parent.mkdir()
    own.write_text("name: mine\n")
    assert resolve_config_path("configs/math.yaml") == Path("configs/math.yaml")
    assert load_config("configs/math.yaml").name == "mine"
