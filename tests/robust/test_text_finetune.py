"""``hessaudit finetune`` on a Hugging Face text classifier, through the CLI: the reweighted loss
with the per-group projection checked after every optimizer step, the ``final/`` and ``best/``
model folders reloaded with transformers, a resumed run equal to an uninterrupted one, every
loss and the noise-matrix estimate, and the refusals (a user's ``final/``, text flags on image
data, a bad ``--warmup-epochs``).

The model is the tiny BERT (2 layers, hidden 16) of ``tests/text_cases.py``, pretrained with
three classes; the data has two, so the classifier is a new head.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from hessaudit.cli import main
from hessaudit.robust.config import FinetuneConfig
from hessaudit.robust.projection import distances
from hessaudit.robust.trainer import resume_config, run_finetune
from hessaudit.robust.training_run import TrainingRun
from hessaudit.robust.types import TrainingDisplay
from tests.text_cases import make_text_case, sentences, write_rows

ATTENTION, LINEAR, HEAD = 0.004, 0.006, 0.05


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("text_finetune")
    built = make_text_case(root / "bert", "bert")
    texts = sentences(40, seed=3)
    write_rows(root / "train.csv", [{"text": t, "label": i % 2} for i, t in enumerate(texts)])
    dev = sentences(10, seed=4)
    write_rows(root / "dev.csv", [{"text": t, "label": i % 2} for i, t in enumerate(dev)])
    return built, root / "train.csv", root / "dev.csv"


def _run(args: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    return int(exc.value.code)


def _args(case, out: Path, *extra) -> list:
    built, train, dev = case
    return [
        "finetune", "--model", built.ft, "--pretrained", built.ft, "--data", train,
        "--eval-data", dev, "--out", out, "--batch-size", "8", "--seed", "1", *extra,
    ]


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_reweight_projects_every_group_after_each_step(case, tmp_path, monkeypatch, capsys):
    """Every constrained tensor is inside its group's ball after every optimizer step, the
    radii follow the groups, and the radii bind (the check is not vacuous)."""
    seen: list[dict[str, float]] = []
    original = TrainingRun.project_

    def checked(self, params):
        original(self, params)
        dist = distances(params, self.anchors, list(self.radii))
        for name, radius in self.radii.items():
            # W = W_pre + D (W - W_pre) / ||W - W_pre|| is stored in float32: each entry is
            # off by at most 2^-24 |W_ij|, so the distance by at most 2^-24 ||W||_F
            slack = 2 * 2.0**-24 * float(params[name].detach().double().norm())
            assert dist[name] <= radius + slack, (name, dist[name], radius)
        seen.append({name: dist[name] / radius for name, radius in self.radii.items()})

    monkeypatch.setattr(TrainingRun, "project_", checked)
    out = tmp_path / "run"
    code = _run(_args(
        case, out, "--epochs", "2", "--lr", "5e-3", "--inject-noise", "symmetric:0.2",
        "--noise-matrix", "injected", "--radius-attention", ATTENTION, "--radius-linear",
        LINEAR, "--head-radius", HEAD, "--val-fraction", "0.25",
    ))
    assert code == 0, capsys.readouterr().err
    resolved = json.loads((out / "config.json").read_text())["resolved"]
    steps = resolved["schedule"]["steps_per_epoch"]
    assert len(seen) == 2 * steps == resolved["schedule"]["total_steps"]
    groups, radii = resolved["radius_groups"], resolved["radii"]
    assert {groups[n] for n in radii} >= {"attention", "linear", "predictor", "embedding"}
    for name, radius in radii.items():
        expected = {"attention": ATTENTION, "linear": LINEAR, "predictor": HEAD}.get(
            groups[name], 1.0)  # embeddings keep --radius
        assert radius == expected, name
    # the balls bind: some tensor of each group sits on its sphere after some step
    for group in ("attention", "linear", "predictor"):
        names = [n for n in radii if groups[n] == group]
        assert max(step[n] for step in seen for n in names) > 1 - 1e-3, group
    shown = capsys.readouterr()
    assert "attention radius 0.004, linear radius 0.006" in " ".join(
        (shown.out + shown.err).split())


def test_final_folder_loads_with_transformers(case, tmp_path):
    """final/ and best/ are model folders transformers loads directly, with the tokenizer,
    holding exactly final.safetensors / best.safetensors."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "run"
    assert _run(_args(case, out, "--epochs", "2", "--loss", "ce", "--val-fraction", "0.25",
                      "--lr", "1e-3")) == 0
    for kind in ("final", "best"):
        folder = out / kind
        model = AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True)
        assert model.config.num_labels == 2
        saved = _tensors(out / f"{kind}.safetensors")
        state = model.state_dict()
        for name, tensor in saved.items():
            assert torch.equal(state[name], tensor), name
        marker = json.loads((folder / "hessaudit_run.json").read_text())
        assert marker["kind"] == kind and marker["weights"] == f"{kind}.safetensors"
    tokenizer = AutoTokenizer.from_pretrained(out / "final", local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(out / "final").eval()
    batch = tokenizer(["the cat sat on the mat", "good movie"], padding=True,
                      return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()
    finished = json.loads((out / "finished.json").read_text())
    assert {"final", "best"} <= set(finished["files"])


class _Interrupt(TrainingDisplay):
    def __init__(self, after: int) -> None:
        self.after = after

    def end_epoch(self, row) -> None:
        if row["epoch"] == self.after:
            raise KeyboardInterrupt


def _config(case, out: Path, **changes) -> FinetuneConfig:
    built, train, dev = case
    options = dict(
        model=str(built.ft), pretrained=str(built.ft), data=str(train), eval_data=str(dev),
        out=str(out), batch_size=8, epochs=3, lr=3e-3, seed=2, val_fraction=0.25,
        inject_noise="symmetric:0.2", noise_matrix="injected", radius_attention=0.01,
        radius_linear=0.02, head_radius=0.5, warmup_epochs=1,
    )
    options.update(changes)
    return FinetuneConfig(**options)


def test_resumed_text_run_equals_uninterrupted(case, tmp_path):
    """Ctrl-C after epoch 1 of 3 (AdamW with decay groups, linear warm-up schedule stepped
    per step, dropout): the resumed run ends with the same weights, bit for bit."""
    run_finetune(_config(case, tmp_path / "a"))
    with pytest.raises(KeyboardInterrupt):
        run_finetune(_config(case, tmp_path / "b"), display=_Interrupt(1))
    assert not (tmp_path / "b" / "final").exists()
    run_finetune(resume_config(tmp_path / "b"), resume=True)
    for name in ("final.safetensors", "best.safetensors", "final/model.safetensors"):
        a, b = _tensors(tmp_path / "a" / name), _tensors(tmp_path / "b" / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert (tmp_path / "a" / "metrics.csv").read_text().split("\n")[0] == \
        (tmp_path / "b" / "metrics.csv").read_text().split("\n")[0]


@pytest.mark.parametrize("loss", ["ce", "label-smoothing", "forward", "gce", "sce", "js"])
def test_every_loss_trains_a_text_model(case, tmp_path, loss):
    extra = {"noise_matrix": "symmetric:0.2"} if loss == "forward" else {"noise_matrix": None}
    result = run_finetune(_config(case, tmp_path / loss, loss=loss, epochs=1, **extra))
    assert result.epochs_run == 1 and (tmp_path / loss / "final" / "config.json").is_file()


def test_estimated_noise_matrix_on_text(case, tmp_path):
    result = run_finetune(_config(case, tmp_path / "est", epochs=1, noise_matrix="estimate:dual-t",
                                  estimate_epochs=1))
    assert result.noise_matrix.shape == (2, 2)
    noise = json.loads((tmp_path / "est" / "noise.json").read_text())
    assert noise["estimated"]["method"] == "dual-t"


def test_a_users_final_folder_is_never_replaced(case, tmp_path, capsys):
    out = tmp_path / "run"
    (out / "final").mkdir(parents=True)
    (out / "final" / "notes.txt").write_text("mine")
    assert _run(_args(case, out, "--epochs", "1", "--loss", "ce", "--overwrite")) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --out") and "final" in err and err.count("\n") == 1
    assert "Traceback" not in err
    assert [p.name for p in out.iterdir()] == ["final"]
    assert (out / "final" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (["--warmup-epochs", "5"], "--warmup-epochs"),
        (["--warmup-epochs", "1", "--schedule", "step"], "--warmup-epochs"),
        (["--radius-attention", "0"], "--radius-attention"),
        (["--max-length", "0"], "--max-length"),
    ],
)
def test_bad_text_options_fail_with_one_line(case, tmp_path, capsys, extra, flag):
    out = tmp_path / "run"
    assert _run(_args(case, out, "--epochs", "2", "--loss", "ce", *extra)) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {flag}") and err.count("\n") == 1, err
    assert not out.exists()


def test_text_flags_on_image_data_are_refused(tmp_path, capsys, tiny_checkpoints):
    out = tmp_path / "run"
    code = _run(["finetune", "--model", tiny_checkpoints.spec, "--pretrained",
                 tiny_checkpoints.pretrained, "--data", "digits", "--samples", "32",
                 "--out", out, "--loss", "ce", "--max-length", "64"])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --max-length") and err.count("\n") == 1
    assert not out.exists()
