"""Issue 12 §11: no file is written outside the paths the user named.

matplotlib's font cache (``report``) and torch's ``torchinductor_$USER`` folder (created when
timm imports torch._dynamo) go to a private temporary folder that is removed at exit. Checked
with a clean HOME and TMPDIR in a real subprocess: both stay empty.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hessaudit.cli import PRIVATE_CACHE_VARIABLES, private_caches

REPO = Path(__file__).resolve().parents[2]


def _run_clean(tmp_path: Path, *args: object) -> tuple[list[str], subprocess.CompletedProcess]:
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in PRIVATE_CACHE_VARIABLES}
    env.update(HOME=str(home), TMPDIR=str(tmp), PYTHONPATH=str(REPO))
    env.pop("XDG_CACHE_HOME", None)
    env.pop("XDG_CONFIG_HOME", None)
    proc = subprocess.run(
        [sys.executable, "-m", "hessaudit", *map(str, args)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    created = sorted(str(p.relative_to(tmp_path)) for p in (*home.rglob("*"), *tmp.rglob("*")))
    return created, proc


def test_report_writes_nothing_under_home_or_tmpdir(tmp_path) -> None:
    from tests.documents import VALID

    (tmp_path / "a.json").write_text(json.dumps(VALID))
    created, proc = _run_clean(tmp_path, "report", tmp_path / "a.json", "--out",
                               tmp_path / "a.html")
    assert proc.returncode == 0, proc.stderr
    assert "base64" in (tmp_path / "a.html").read_text()  # the matplotlib plot was drawn
    assert created == []


@pytest.mark.slow  # a torch + timm import in a subprocess
def test_measure_writes_nothing_under_home_or_tmpdir(tmp_path, tiny_checkpoints) -> None:
    pair = tiny_checkpoints
    created, proc = _run_clean(
        tmp_path, "measure", pair.pretrained, pair.finetuned, "--model", "test_resnet",
        "--data", "digits", "--samples", "4", "--no-spectrum", "--json", tmp_path / "a.json",
    )
    # test_resnet does not fit the tiny checkpoints: the run fails after importing timm,
    # which is what creates torchinductor_$USER.
    assert proc.returncode == 1, proc.stderr
    assert created == []


def test_private_caches_respects_the_users_variables(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mine"))
    with private_caches():
        inductor = Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
        assert os.environ["MPLCONFIGDIR"] == str(tmp_path / "mine")
        inductor.mkdir(parents=True)
        (inductor / "x").write_text("x")
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ
    assert not inductor.parent.exists()  # the private folder is gone
    assert os.environ["MPLCONFIGDIR"] == str(tmp_path / "mine")
