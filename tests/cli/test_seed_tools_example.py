"""``examples/noisy_labels/seed_tools.py --quick`` (Dual-T vs confident joint, the non-negative
correction), run as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "noisy_labels" / "seed_tools.py"


@pytest.mark.slow
def test_seed_tools_quick(tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path), "--threads", "1"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    estimate = pd.read_csv(tmp_path / "estimate.csv")
    assert set(estimate["method"]) == {"anchor", "confident", "dual-t"}
    assert estimate["max_abs"].between(0, 1).all()
    nonneg = pd.read_csv(tmp_path / "nonneg.csv")
    assert set(nonneg["method"]) == {"reweight", "reweight+nonneg"}
    assert (nonneg.loc[nonneg["method"] == "reweight+nonneg", "min_train_loss"] >= 0).all()
    assert "max |F_hat - F|" in (tmp_path / "seed_tools_all.md").read_text()
