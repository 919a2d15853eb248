"""The public data preparation (what ``tune`` reuses): the noise injection, the validation
split, and prepare_data built from exactly those steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hessaudit.errors import HessauditError
from hessaudit.inputs.data import load_data
from hessaudit.robust._seeds import derive_seed
from hessaudit.robust.config import FinetuneConfig
from hessaudit.robust.data_setup import (
    inject_label_noise,
    label_split,
    prepare_data,
    split_validation,
)


def _config(tmp_path, **changes) -> FinetuneConfig:
    options = {"model": "m", "pretrained": "p", "data": "digits", "out": str(tmp_path),
               "loss": "ce"}
    options.update(changes)
    return FinetuneConfig(**options).resolved()


def test_split_validation(tmp_path) -> None:
    config = _config(tmp_path, val_fraction=0.3, seed=5)
    val, train = split_validation(config, 20)
    assert len(val) == 6 and len(train) == 14
    assert val == sorted(val) and train.tolist() == sorted(train.tolist())
    assert sorted(val + train.tolist()) == list(range(20))
    # the draw is the first n_val of the permutation of derive_seed(seed, "split")
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(derive_seed(5, "split")))
    assert val == sorted(perm[:6].tolist())
    assert split_validation(config, 20)[0] == val
    assert split_validation(_config(tmp_path, val_fraction=0.3, seed=6), 20)[0] != val

    assert len(split_validation(_config(tmp_path, val_fraction=0.01), 20)[0]) == 1  # at least 1
    assert len(split_validation(_config(tmp_path, val_fraction=0.99), 20)[0]) == 19  # n - 1
    with pytest.raises(HessauditError, match="--val-fraction: --data digits has only 1 example"):
        split_validation(config, 1)

    val, train = split_validation(_config(tmp_path), 7)  # no --val-fraction
    assert val == [] and train.tolist() == list(range(7))


def test_inject_label_noise(tmp_path) -> None:
    labels = torch.arange(200) % 4
    noisy, clean, injection = inject_label_noise(_config(tmp_path), labels, None, 4)
    assert torch.equal(noisy, labels) and clean is None and injection is None

    config = _config(tmp_path, inject_noise="symmetric:0.5", noise_seed=3)
    noisy, clean, injection = inject_label_noise(config, labels.to(torch.int32), None, 4)
    assert noisy.dtype == clean.dtype == torch.int64
    assert torch.equal(clean, labels)  # the labels given were the clean ones
    flipped = (noisy != clean).nonzero().flatten().tolist()
    assert flipped == sorted(injection.flipped_indices) and 50 < len(flipped) < 150
    again, _, _ = inject_label_noise(config, labels, None, 4)
    assert torch.equal(again, noisy)  # noise_seed decides the draw

    source_clean = (labels + 1) % 4  # a source with clean labels of its own keeps them
    _, clean, _ = inject_label_noise(config, labels, source_clean, 4)
    assert torch.equal(clean, source_clean)


def test_prepare_data_is_built_from_the_public_steps(tiny_checkpoints, tmp_path) -> None:
    config = _config(
        tmp_path, model=tiny_checkpoints.spec, pretrained=str(tiny_checkpoints.pretrained),
        samples=60, seed=2, val_fraction=0.2, inject_noise="symmetric:0.4",
        eval_data="digits:test",
    )
    logged: list[str] = []
    with torch.random.fork_rng(devices=[]):
        setup = prepare_data(config, torch.device("cpu"), log=logged.append)
    assert logged == []  # clean labels are known (the noise was injected)
    assert setup.num_classes == 10 and len(setup.train) == 48 and len(setup.val) == 12

    # what tune computes on its own: load --data the same way, then label_split
    loaded = load_data("digits", role="train", input_config=setup.input_config, samples=60,
                       seed=2)
    labels = label_split(config, loaded, 10)
    assert torch.equal(labels.noisy, setup.labels.noisy)
    assert labels.val_indices == setup.val_indices
    assert torch.equal(labels.train_indices, setup.labels.train_indices)
    train, val = labels.train_indices, torch.tensor(labels.val_indices)
    assert torch.equal(setup.train.x, loaded.x[train])
    assert torch.equal(setup.train.y, labels.noisy[train])  # trained on the noisy labels
    assert torch.equal(setup.train.clean, labels.clean[train])
    assert torch.equal(setup.val.y, labels.clean[val])  # validated on the clean ones
    assert np.array_equal(setup.injection.flipped_indices, labels.injection.flipped_indices)
    assert setup.heldout is not None and setup.heldout_summary is not None
    # --samples: every training example's position in all of --data (for noise.json)
    assert setup.source_size is not None and len(setup.train_source_indices) == 48


def test_prepare_data_logs_unknown_clean_labels(tiny_checkpoints, tmp_path) -> None:
    config = _config(tmp_path, model=tiny_checkpoints.spec,
                     pretrained=str(tiny_checkpoints.pretrained), samples=20)
    logged: list[str] = []
    with torch.random.fork_rng(devices=[]):
        setup = prepare_data(config, torch.device("cpu"), log=logged.append)
    assert logged == ["training labels are used as given (no clean labels known)"]
    assert setup.val is None and setup.heldout is None and setup.labels.clean is None
    assert setup.val_indices == [] and setup.injection is None
