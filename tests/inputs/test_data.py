"""Data sources: built-in digits, ImageFolder, .npz; preprocessing; subsets; Dataset API."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from hessaudit.errors import HessauditError
from hessaudit.inputs.data import Dataset, DataWarning, digits_split, load_data, prepare_images
from hessaudit.inputs.models import InputConfig

# ------------------------------------------------------------------ digits


def test_digits_split_is_disjoint_stratified_and_fixed() -> None:
    train, test = digits_split()
    assert len(train) + len(test) == 1797
    assert set(train.tolist()).isdisjoint(test.tolist())
    assert torch.equal(train, torch.sort(train).values)
    again_train, again_test = digits_split()
    assert torch.equal(train, again_train) and torch.equal(test, again_test)
    full = load_data("digits:all")
    for c in range(10):
        n_c = int((full.y == c).sum())
        assert int((full.y[test] == c).sum()) == n_c // 3
    # pinned: a change here changes every published digits result
    assert len(test) == 596 and int(test.sum()) == 533268


def test_digits_parts_and_roles() -> None:
    train = load_data("digits")
    held_out = load_data("digits", role="eval")
    assert train.source == "digits:train" and held_out.source == "digits:test"
    assert len(train) == 1201 and len(held_out) == 596
    assert torch.equal(load_data("digits:train").x, train.x)
    assert torch.equal(load_data("digits:test", role="train").y, held_out.y)
    assert train.x.shape[1:] == (1, 8, 8) and train.x.dtype == torch.float32
    assert float(train.x.min()) == 0.0 and float(train.x.max()) == 1.0
    assert train.y.dtype == torch.int64 and train.num_classes == 10
    all_x = load_data("digits:all").x
    train_idx, _ = digits_split()
    assert torch.equal(all_x[train_idx], train.x)


def test_digits_pretrain_task_is_a_different_task() -> None:
    digits = load_data("digits")
    pre = load_data("digits-pretrain")
    assert pre.num_classes == 5 and torch.equal(pre.y, digits.y % 5)
    assert torch.equal(pre.x, digits.x)
    assert len(load_data("digits-pretrain", role="eval")) == 596
    assert pre.classes == ("0 or 5", "1 or 6", "2 or 7", "3 or 8", "4 or 9")


def test_digits_errors() -> None:
    with pytest.raises(HessauditError, match="unknown part"):
        load_data("digits:validation")
    with pytest.raises(HessauditError, match="role"):
        load_data("digits", role="test")
    with pytest.raises(HessauditError, match=r"label 9 is outside \[0, 5\)"):
        load_data("digits", num_classes=5)


def test_digits_adapted_to_a_timm_like_input_config() -> None:
    cfg = InputConfig(3, (16, 16), (0.5, 0.4, 0.3), (0.2, 0.2, 0.2))
    data = load_data("digits", role="eval", input_config=cfg)
    assert data.x.shape == (596, 3, 16, 16)
    raw = data.x * torch.tensor(cfg.std).view(1, 3, 1, 1) + torch.tensor(cfg.mean).view(1, 3, 1, 1)
    assert float(raw.min()) >= -1e-5 and float(raw.max()) <= 1 + 1e-5
    assert torch.allclose(raw[:, 0], raw[:, 1], atol=1e-6)  # grayscale repeated


# ------------------------------------------------------------------ samples


def test_samples_are_seeded_and_kept_in_data_order() -> None:
    full = load_data("digits")
    a = load_data("digits", samples=50, seed=1)
    b = load_data("digits", samples=50, seed=1)
    c = load_data("digits", samples=50, seed=2)
    assert len(a) == 50 and torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    chosen = torch.sort(torch.randperm(len(full), generator=torch.Generator().manual_seed(1))[:50])
    assert torch.equal(a.y, full.y[chosen.values])
    assert len(load_data("digits", samples=len(full))) == len(full)


@pytest.mark.parametrize("samples", [0, -3, 1202])
def test_bad_samples(samples: int) -> None:
    with pytest.raises(HessauditError, match=f"--samples {samples}"):
        load_data("digits", samples=samples)


# ------------------------------------------------------------------ ImageFolder


def test_image_folder_mixed_modes_become_rgb(image_folder: Path) -> None:
    data = load_data(str(image_folder))
    assert data.x.shape == (5, 3, 5, 6)  # (N, C, H, W) for 6x5 (width x height) images
    assert data.y.tolist() == [0, 0, 0, 1, 1]
    assert data.classes == ("cat", "dog") and data.num_classes == 2
    gray = data.x[3]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    assert float(data.x[0, 0, 0, 0]) == 0.0  # first gradient pixel is 0 -> 0.0
    assert float(data.x.max()) <= 1.0


def test_image_folder_grayscale_only_and_expanded(tmp_path: Path, png_writer) -> None:
    root = tmp_path / "gray"
    for cls in ("a", "b"):
        png_writer(root / cls / "1.png", mode="L", value=255)
    one = load_data(str(root))
    assert one.x.shape == (2, 1, 5, 6) and float(one.x[0, 0, 0, 0]) == 1.0
    three = load_data(str(root), input_config=InputConfig(3, None, None, None))
    assert three.x.shape == (2, 3, 5, 6)
    assert torch.equal(three.x[:, 0], three.x[:, 2])


def test_image_folder_resize_and_normalize(image_folder: Path) -> None:
    cfg = InputConfig(1, (4, 8), (0.5,), (0.5,))
    data = load_data(str(image_folder), input_config=cfg)
    assert data.x.shape == (5, 1, 4, 8)
    assert float(data.x.min()) >= -1.0 and float(data.x.max()) <= 1.0


def test_image_folder_skips_junk_with_a_warning(image_folder: Path, png_writer) -> None:
    (image_folder / "cat" / "notes.txt").write_text("not an image")
    (image_folder / "dog" / "broken.png").write_bytes(b"\x89PNG but not really")
    (image_folder / "dog" / ".hidden.png").write_bytes(b"ignored silently")
    png_writer(image_folder / "dog" / "nested" / "d9.png", mode="L")
    with pytest.warns(DataWarning, match="skipped 2 file") as record:
        data = load_data(str(image_folder))
    message = str(record[0].message)
    assert "notes.txt (not an image file)" in message and "broken.png (unreadable" in message
    assert len(data) == 6 and data.y.tolist().count(1) == 3  # nested image found
    assert sorted(Path(p).name for p in data.skipped) == ["broken.png", "notes.txt"]
    assert data.to_dict()["skipped"]


def test_image_folder_errors(tmp_path: Path, png_writer) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(HessauditError, match="no class sub-folders"):
        load_data(str(root))
    png_writer(root / "a" / "1.png")
    (root / "b").mkdir()
    (root / "b" / "readme.md").write_text("hi")
    with pytest.raises(HessauditError, match="class folder 'b' has no image files"):
        load_data(str(root))
    (root / "b" / "1.png").write_bytes(b"junk")
    (root / "a" / "1.png").write_bytes(b"junk")
    with warnings.catch_warnings(), pytest.raises(HessauditError, match="no readable images"):
        warnings.simplefilter("ignore")
        load_data(str(root))


def test_image_folder_sizes_must_agree_without_input_size(tmp_path: Path, png_writer) -> None:
    root = tmp_path / "sizes"
    png_writer(root / "a" / "1.png", size=(6, 5))
    png_writer(root / "b" / "1.png", size=(8, 8))
    with pytest.raises(HessauditError, match="different sizes") as info:
        load_data(str(root))
    assert "--input-size" in str(info.value)
    data = load_data(str(root), input_config=InputConfig(3, (8, 8), None, None))
    assert data.x.shape == (2, 3, 8, 8)


def test_image_folder_samples_and_num_classes(image_folder: Path) -> None:
    data = load_data(str(image_folder), samples=3, seed=0, num_classes=4)
    assert len(data) == 3 and data.num_classes == 4
    assert data.y.tolist() == sorted(data.y.tolist())


def test_sixteen_bit_grayscale_png(tmp_path: Path) -> None:
    from PIL import Image

    path = tmp_path / "deep" / "a" / "x.png"
    path.parent.mkdir(parents=True)
    Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16)).save(path)
    data = load_data(str(tmp_path / "deep"))
    assert data.x.shape == (1, 1, 4, 4) and float(data.x.max()) == pytest.approx(1.0)


# ------------------------------------------------------------------ npz


def _npz(path: Path, **arrays) -> str:
    np.savez(path, **arrays)
    return str(path)


def test_npz_as_is(tmp_path: Path) -> None:
    x = np.arange(24, dtype=np.float64).reshape(6, 4)
    y = np.array([0, 2, 1, 0, 2, 2], dtype=np.int32)
    data = load_data(_npz(tmp_path / "d.npz", x=x, y=y))
    assert data.x.dtype == torch.float32 and data.x.shape == (6, 4)
    assert torch.equal(data.x, torch.tensor(x, dtype=torch.float32))
    assert data.y.dtype == torch.int64 and data.y.tolist() == y.tolist()
    assert data.num_classes == 3 and data.clean_y is None
    assert load_data(str(tmp_path / "d.npz"), num_classes=5).num_classes == 5


def test_npz_whole_float_labels_and_clean_labels(tmp_path: Path) -> None:
    x = np.zeros((3, 1, 2, 2), dtype=np.uint8)
    path = _npz(tmp_path / "d.npz", x=x, y=np.array([0.0, 1.0, 3.0]), clean_y=np.array([0, 1, 1]))
    data = load_data(path, input_config=InputConfig(3, None, None, None))
    assert data.y.tolist() == [0, 1, 3] and data.clean_y.tolist() == [0, 1, 1]
    assert data.x.shape == (3, 3, 2, 2) and data.num_classes == 4


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"x": np.zeros((3, 2))}, "no array named 'y'.*arrays found: x"),
        ({"inputs": np.zeros((3, 2)), "labels": np.zeros(3)}, "'x' or 'y'"),
        ({"x": np.zeros((3, 2)), "y": np.array([0, 1])}, "x has 3 examples but y has 2"),
        ({"x": np.zeros((3, 2)), "y": np.array([0.5, 1.0, 2.0])}, "must be integers"),
        ({"x": np.array(["a", "b"]), "y": np.array([0, 1])}, "x must be numeric"),
        ({"x": np.zeros((2, 2)), "y": np.array(["a", "b"])}, "y must hold integer labels"),
        ({"x": np.zeros((2, 2)), "y": np.zeros((2, 1), dtype=int)}, "must be 1-D"),
        ({"x": np.full((2, 2), np.nan), "y": np.array([0, 1])}, "NaN or Inf"),
        ({"x": np.zeros((2, 2)), "y": np.array([0, -1])}, "label -1 is negative"),
        ({"x": np.zeros((0, 2)), "y": np.zeros(0, dtype=int)}, "no examples"),
    ],
)
def test_npz_errors(tmp_path: Path, arrays: dict, match: str) -> None:
    with pytest.raises(HessauditError, match=match):
        load_data(_npz(tmp_path / "d.npz", **arrays))


def test_npz_object_arrays_are_not_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "obj.npz"
    np.savez(path, x=np.array([{"a": 1}, None], dtype=object), y=np.array([0, 1]))
    with pytest.raises(HessauditError, match="Python objects"):
        load_data(str(path))


def test_npz_labels_outside_num_classes(tmp_path: Path) -> None:
    path = _npz(tmp_path / "d.npz", x=np.zeros((2, 2)), y=np.array([0, 4]))
    with pytest.raises(HessauditError, match=r"label 4 is outside \[0, 3\)"):
        load_data(path, num_classes=3)


def test_corrupt_npz_and_unknown_sources(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(HessauditError, match=r"not a readable \.npz"):
        load_data(str(bad))
    with pytest.raises(HessauditError, match="does not exist"):
        load_data(str(tmp_path / "missing"))
    csv = tmp_path / "data.txt"  # .csv is a text table (issue 14)
    csv.write_text("1,2\n")
    with pytest.raises(HessauditError, match="unknown kind of file"):
        load_data(str(csv))


def test_flat_npz_with_an_image_config(tmp_path: Path) -> None:
    path = _npz(tmp_path / "d.npz", x=np.zeros((2, 5)), y=np.array([0, 1]))
    assert load_data(path, input_config=InputConfig(1, None, None, None)).x.shape == (2, 5)
    with pytest.raises(HessauditError, match="not images"):
        load_data(path, input_config=InputConfig(3, (32, 32), None, None))


# ------------------------------------------------------------------ preprocessing, Dataset


def test_prepare_images_channel_mismatch() -> None:
    with pytest.raises(HessauditError, match="images have 3 channels but the model takes 1"):
        prepare_images(torch.zeros(1, 3, 4, 4), InputConfig(1, None, None, None))


def _toy(n: int = 7) -> Dataset:
    return Dataset(
        x=torch.arange(n, dtype=torch.float32).view(n, 1),
        y=torch.arange(n) % 3,
        num_classes=3,
        source="toy",
    )


def test_dataset_api() -> None:
    ds = _toy()
    assert len(ds) == 7
    batches = list(ds.batches(3))
    assert [len(y) for _, y in batches] == [3, 3, 1]
    assert torch.equal(torch.cat([x for x, _ in batches]), ds.x)
    sub = ds.subset([5, 1])
    assert sub.x.flatten().tolist() == [5.0, 1.0] and sub.y.tolist() == [2, 1]
    assert sub.subset(torch.tensor([1])).y.tolist() == [1]
    summary = ds.to_dict()
    assert summary == {
        "source": "toy", "n": 7, "num_classes": 3, "shape": [1], "has_clean_labels": False,
        "scaling": "none",
    }
    json.dumps(summary)
    with pytest.raises(HessauditError, match="--batch-size"):
        list(ds.batches(0))
    with pytest.raises(HessauditError, match="out of range"):
        ds.subset([7])


def test_with_labels_keeps_or_sets_clean_labels() -> None:
    ds = _toy()
    noisy = ds.with_labels((ds.y + 1) % 3, clean_y=ds.y)
    assert torch.equal(noisy.clean_y, ds.y) and not torch.equal(noisy.y, ds.y)
    again = noisy.with_labels(ds.y)
    assert torch.equal(again.clean_y, ds.y)  # clean labels kept by default
    assert noisy.with_labels(ds.y, clean_y=None).clean_y is None
    assert noisy.subset([0, 1]).clean_y.tolist() == ds.y[:2].tolist()
    with pytest.raises(HessauditError, match="outside"):
        ds.with_labels(torch.full((7,), 3))
    with pytest.raises(HessauditError, match="7 examples"):
        ds.with_labels(torch.zeros(6, dtype=torch.long))
