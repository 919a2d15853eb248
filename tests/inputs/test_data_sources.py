"""The data dispatcher (hessaudit.inputs.data): the ordered SOURCES table, what it does for
every source (subset, adaptation, label check, hints), and how a new source plugs in."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from hessaudit.errors import HessauditError
from hessaudit.inputs import data, digits, image_folder, npz, text_files
from hessaudit.inputs.data import SOURCES, choose_subset, find_source, load_data
from hessaudit.inputs.data_config import InputConfig
from hessaudit.inputs.dataset import Dataset, DataSource, SourceRequest


def _csv_source(calls: list[SourceRequest], *, draws_samples: bool = False) -> DataSource:
    """A stand-in for a new source (one module + one line): ``.dat`` files of ``label,v1,v2``
    (``.csv`` is the text-table source's)."""

    def load(request: SourceRequest) -> Dataset:
        calls.append(request)
        rows = np.loadtxt(request.path, delimiter=",", ndmin=2)
        x = torch.as_tensor(rows[:, 1:], dtype=torch.float32)
        y = torch.as_tensor(rows[:, 0], dtype=torch.int64)
        return Dataset(x=x, y=y, num_classes=int(y.max()) + 1, source=str(request.path))

    return DataSource(
        name="dat",
        matches=lambda request: request.path.suffix.lower() == ".dat",
        load=load,
        offer="a .dat file",
        draws_samples=draws_samples,
    )


@pytest.fixture
def table(tmp_path: Path) -> Path:
    path = tmp_path / "t.dat"
    rows = [[i % 3, float(i), float(-i)] for i in range(12)]
    path.write_text("\n".join(",".join(f"{v:g}" for v in row) for row in rows) + "\n")
    return path


def test_the_table_holds_one_source_per_module_named_first() -> None:
    assert SOURCES == (digits.SOURCE, image_folder.SOURCE, npz.SOURCE, text_files.SOURCE)
    named = [s.named for s in SOURCES]
    assert named == sorted(named, reverse=True)  # named sources are tried on the text first
    assert [s.draws_samples for s in SOURCES] == [False, True, False, True]


def test_each_kind_of_value_finds_its_source(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", x=np.zeros((2, 3), np.float32), y=np.array([0, 1]))
    (tmp_path / "folder.npz").mkdir()  # a folder is an ImageFolder whatever its name
    assert find_source(SourceRequest("digits:test")) is digits.SOURCE
    assert find_source(SourceRequest("digits-pretrain")) is digits.SOURCE
    assert find_source(SourceRequest(str(tmp_path / "a.npz"))) is npz.SOURCE
    assert find_source(SourceRequest(str(tmp_path / "folder.npz"))) is image_folder.SOURCE


def test_builtin_names_win_over_files_of_the_same_name(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "digits" / "a").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert load_data("digits").source == "digits:train"
    with pytest.raises(HessauditError, match="class folder 'a' has no image files"):
        load_data("./digits")  # the folder, spelled as a path


def test_missing_and_unknown_paths_list_the_sources(tmp_path: Path) -> None:
    with pytest.raises(HessauditError) as missing:
        load_data(str(tmp_path / "nope"))
    assert missing.value.hint == (
        "give an ImageFolder directory, a .npz file, a text table (.csv, .tsv, .jsonl, "
        ".parquet), or a built-in: digits, digits:train, digits:test, digits:all"
    )
    (tmp_path / "t.txt").write_text("1")
    with pytest.raises(HessauditError, match=r"unknown kind of file \(extension '.txt'\)") as unk:
        load_data(str(tmp_path / "t.txt"))
    assert unk.value.hint == (
        "give an ImageFolder directory, a .npz file with x and y, a text table (.csv, .tsv, "
        ".jsonl, .parquet), or 'digits'"
    )


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_is_refused_before_any_file_source_looks_at_it(tmp_path: Path, monkeypatch) -> None:
    calls: list[SourceRequest] = []
    source = _csv_source(calls)
    asked: list[str] = []
    spy = dataclasses.replace(source, matches=lambda r: asked.append(r.text) or True)
    monkeypatch.setattr(data, "SOURCES", (digits.SOURCE, spy))
    os.mkfifo(tmp_path / "pipe.csv")
    with pytest.raises(HessauditError, match="FIFO"):
        load_data(str(tmp_path / "pipe.csv"))
    assert asked == [] and calls == []


def test_a_new_source_plugs_in_with_one_table_entry(table: Path, monkeypatch) -> None:
    calls: list[SourceRequest] = []
    monkeypatch.setattr(data, "SOURCES", (*SOURCES, _csv_source(calls)))
    full = load_data(str(table))
    assert len(full) == 12 and full.num_classes == 3 and len(calls) == 1
    # the dispatcher draws the --samples subset, exactly as for the built-in sources
    part = load_data(str(table), samples=5, seed=3)
    idx = choose_subset(12, 5, 3, str(table))
    assert torch.equal(part.x, full.x[idx]) and torch.equal(part.y, full.y[idx])
    assert calls[-1].samples == 5 and calls[-1].seed == 3
    # ... and checks the labels against num_classes
    with pytest.raises(HessauditError, match=r"label 2 is outside \[0, 2\)"):
        load_data(str(table), num_classes=2)
    assert load_data(str(table), num_classes=7).num_classes == 7
    # ... and names the new source in the hint for a missing path
    with pytest.raises(HessauditError) as missing:
        load_data(str(table.parent / "gone.dat"))
    assert missing.value.hint.startswith(
        "give an ImageFolder directory, a .npz file, a text table (.csv, .tsv, .jsonl, "
        ".parquet), a .dat file, or a built-in: digits"
    )


def test_a_source_that_draws_its_subset_is_not_subset_twice(table: Path, monkeypatch) -> None:
    calls: list[SourceRequest] = []
    monkeypatch.setattr(data, "SOURCES", (_csv_source(calls, draws_samples=True), *SOURCES))
    ds = load_data(str(table), samples=5, seed=3)
    assert len(ds) == 12  # the stand-in ignores samples; the dispatcher trusts it


def test_every_source_is_adapted_to_the_model(tmp_path: Path) -> None:
    cfg = InputConfig(channels=3, size=None, mean=(0.5,), std=(0.25,))
    x = np.linspace(0, 1, 2 * 8 * 8, dtype=np.float32).reshape(2, 1, 8, 8)
    np.savez(tmp_path / "g.npz", x=x, y=np.array([0, 1]))
    plain = load_data(str(tmp_path / "g.npz"))
    adapted = load_data(str(tmp_path / "g.npz"), input_config=cfg)
    assert torch.equal(adapted.x, ((plain.x.expand(-1, 3, -1, -1) - 0.5) / 0.25).contiguous())
    assert adapted.preprocessing == ("grayscale repeated to 3 channels", "normalized with mean/std")
    digits_adapted = load_data("digits:test", input_config=cfg)
    assert digits_adapted.x.shape[1] == 3 and digits_adapted.preprocessing


def test_choose_subset_is_the_sorted_seeded_permutation() -> None:
    assert choose_subset(10, None, 0, "d") is None
    got = choose_subset(10, 4, 7, "d")
    want = torch.sort(torch.randperm(10, generator=torch.Generator().manual_seed(7))[:4]).values
    assert torch.equal(got, want) and torch.equal(got, torch.sort(got).values)
    assert torch.equal(choose_subset(10, 10, 1, "d"), torch.arange(10))
    for bad in (0, 11, -1):
        with pytest.raises(HessauditError, match=f"--samples {bad}: must be between 1 and the 10"):
            choose_subset(10, bad, 0, "d")
