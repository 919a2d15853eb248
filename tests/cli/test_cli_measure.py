"""``hessaudit measure`` and ``hessaudit inspect`` end to end through the CLI, on real files."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from hessaudit.cli import main

LAYER_KEYS = {
    "name",
    "numel",
    "is_new_head",
    "dist_fro",
    "quad_raw",
    "quad_pos",
    "hcal",
    "top_eig",
    "trace",
    "trace_stderr",
    "converged",
}
TOP_KEYS = {
    "schema",
    "tool_version",
    "created",
    "inputs",
    "settings",
    "layers",
    "train_loss",
    "eval_loss",
    "gap",
    "ratio_to_gap",
    "n",
    "C",
    "C_source",
    "epsilon",
    "hessian_term",
    "bound",
    "success",
}


def run(args: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code


def test_measure_writes_the_contract_json_and_csv(tiny_checkpoints, tmp_path, capsys):
    pair = tiny_checkpoints
    out_json, out_csv = tmp_path / "audit.json", tmp_path / "layers.csv"
    code = run(
        [
            "measure",
            str(pair.pretrained),
            str(pair.finetuned),
            "--model",
            pair.spec,
            "--data",
            "digits",
            "--eval-data",
            "digits",
            "--samples",
            "32",
            "--epsilon",
            "0.05",
            "--json",
            str(out_json),
            "--csv",
            str(out_csv),
            "--quiet",
        ]
    )
    assert code == 0
    document = json.loads(out_json.read_text())
    assert set(document) >= TOP_KEYS
    assert document["schema"] == "hessaudit.audit/1"
    assert {
        "pretrained",
        "finetuned",
        "model",
        "data",
        "samples",
        "seed",
        "device",
        "dtype",
    } <= set(document["inputs"])
    for side in ("pretrained", "finetuned"):
        assert set(document["inputs"][side]) >= {"path", "sha256"}
        assert len(document["inputs"][side]["sha256"]) == 64
    assert {"reduce", "form", "engine", "lanczos_steps", "tol"} <= set(document["settings"])
    assert document["layers"], "no layer measured"
    for layer in document["layers"]:
        assert set(layer) >= LAYER_KEYS
    heads = [layer for layer in document["layers"] if layer["is_new_head"]]
    assert [layer["name"] for layer in heads] == ["fc.weight"]

    # The bound is the formula evaluated on the document's own fields.
    g = (
        math.sqrt(document["C"])
        * sum(math.sqrt(max(layer["hcal"], 0.0)) for layer in document["layers"])
        / math.sqrt(document["n"])
    )
    eps = document["epsilon"]
    assert document["hessian_term"] == pytest.approx(g, rel=1e-12)
    assert document["bound"] == pytest.approx((1 + eps) * document["train_loss"] + (1 + eps) * g)
    assert document["n"] == 1201  # the training part of the built-in digits split
    assert document["C_source"] == "empirical_max"
    assert document["C"] >= document["train_loss"]
    assert document["gap"] == pytest.approx(document["eval_loss"] - document["train_loss"])
    if document["gap"] > 0:
        assert document["ratio_to_gap"] == pytest.approx(g / document["gap"])
    assert document["success"] is True

    frame = pd.read_csv(out_csv)
    assert list(frame["name"]) == [layer["name"] for layer in document["layers"]]
    assert frame["hcal"].tolist() == pytest.approx([layer["hcal"] for layer in document["layers"]])
    assert capsys.readouterr().out == ""


def test_json_to_stdout_prints_nothing_else(tiny_checkpoints, capsys):
    pair = tiny_checkpoints
    code = run(
        [
            "measure",
            str(pair.pretrained),
            str(pair.finetuned),
            "--model",
            pair.spec,
            "--data",
            "digits",
            "--samples",
            "16",
            "--no-spectrum",
            "--json",
            "-",
            "--loss-bound",
            "3.5",
            "--reduce",
            "batch-max",
            "--form",
            "raw",
            "--batch-size",
            "4",
        ]
    )
    assert code == 0
    document = json.loads(capsys.readouterr().out)
    assert document["C"] == 3.5 and document["C_source"] == "user"
    assert document["settings"]["reduce"] == "batch-max"
    assert document["settings"]["form"] == "raw"
    assert document["eval_loss"] is None and document["ratio_to_gap"] is None
    assert all(layer["top_eig"] is None for layer in document["layers"])


def test_table_output_names_every_layer(tiny_checkpoints, capsys):
    pair = tiny_checkpoints
    code = run(
        [
            "measure",
            str(pair.pretrained),
            str(pair.finetuned),
            "--model",
            pair.spec,
            "--data",
            "digits",
            "--samples",
            "16",
            "--no-spectrum",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    for name in ("conv1.weight", "fc.weight", "Hessian term G", "bound"):
        assert name in out


def test_missing_checkpoint_is_one_line_exit_1(tmp_path, capsys):
    code = run(
        [
            "measure",
            str(tmp_path / "nope.safetensors"),
            str(tmp_path / "nope2.safetensors"),
            "--model",
            "resnet18",
            "--data",
            "digits",
        ]
    )
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "nope.safetensors" in err[0]


def test_measure_on_a_timm_resnet18_pair(tmp_path, capsys):
    """All 21 weight layers of a timm resnet18 at 32x32 over 64 examples, exact JVP path."""
    import timm
    import torch

    from hessaudit.inputs.checkpoints import save_checkpoint

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = timm.create_model("resnet18", pretrained=False, num_classes=5)
        # timm zero-initializes each block's last BatchNorm scale; give them life so that
        # every layer has curvature.
        for name, param in model.named_parameters():
            if name.endswith("bn2.weight"):
                param.data.fill_(0.5)
        pre = model.state_dict()
        ft = {
            name: tensor + 0.01 * torch.randn_like(tensor) if tensor.is_floating_point() else tensor
            for name, tensor in pre.items()
        }
        ft["fc.weight"] = torch.randn(10, 512) * 0.05
        ft["fc.bias"] = torch.zeros(10)
    save_checkpoint(tmp_path / "pre.safetensors", pre)
    save_checkpoint(tmp_path / "ft.safetensors", ft)
    code = run(
        [
            "measure",
            str(tmp_path / "pre.safetensors"),
            str(tmp_path / "ft.safetensors"),
            "--model",
            "resnet18",
            "--data",
            "digits",
            "--input-size",
            "32",
            "--samples",
            "64",
            "--no-spectrum",
            "--json",
            str(tmp_path / "audit.json"),
            "--quiet",
        ]
    )
    assert code == 0
    document = json.loads((tmp_path / "audit.json").read_text())
    assert len(document["layers"]) == 21
    assert all(layer["engine_path"] == "jvp" for layer in document["layers"])
    assert all(layer["hcal"] > 0 for layer in document["layers"])
    assert document["layers"][-1]["name"] == "fc.weight"
    assert document["layers"][-1]["is_new_head"]


def test_inspect_lists_distances_and_writes_json(tiny_checkpoints, tmp_path, capsys):
    pair = tiny_checkpoints
    out = tmp_path / "inspect.json"
    code = run(
        [
            "inspect",
            str(pair.pretrained),
            str(pair.finetuned),
            "--model",
            pair.spec,
            "--json",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "conv1.weight" in printed and "new head" in printed
    document = json.loads(out.read_text())
    rows = {row["name"]: row for row in document["layers"]}
    import torch

    expected = torch.linalg.vector_norm(
        pair.finetuned_state["conv1.weight"] - pair.pretrained_state["conv1.weight"]
    )
    assert rows["conv1.weight"]["dist_fro"] == pytest.approx(float(expected), rel=1e-6)
    assert rows["fc.weight"]["is_new_head"] and rows["fc.weight"]["rel_dist"] is None
    assert rows["fc.weight"]["dist_fro"] == pytest.approx(
        float(torch.linalg.vector_norm(pair.finetuned_state["fc.weight"])), rel=1e-6
    )
    assert document["shape_mismatches"][0]["name"] == "fc.weight"


def test_inspect_on_a_timm_resnet18_pair(tmp_path, capsys):
    import timm
    import torch

    from hessaudit.inputs.checkpoints import save_checkpoint

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = timm.create_model("resnet18", pretrained=False, num_classes=1000)
    pre = model.state_dict()
    ft = {k: v.clone() for k, v in pre.items()}
    ft["layer4.1.conv2.weight"] += 0.1
    ft["fc.weight"] = torch.zeros(10, 512)
    ft["fc.bias"] = torch.zeros(10)
    save_checkpoint(tmp_path / "pre.safetensors", pre)
    torch.save({"state_dict": {f"module.{k}": v for k, v in ft.items()}}, tmp_path / "ft.pth")
    code = run(
        [
            "inspect",
            str(tmp_path / "pre.safetensors"),
            str(tmp_path / "ft.pth"),
            "--model",
            "resnet18",
            "--json",
            "-",
        ]
    )
    assert code == 0
    document = json.loads(capsys.readouterr().out)
    assert len(document["layers"]) == 21
    moved = {row["name"]: row["dist_fro"] for row in document["layers"] if row["dist_fro"] > 0}
    assert set(moved) == {"layer4.1.conv2.weight"}  # the zero head has zero distance from zero


def test_measure_on_a_tiny_timm_vit_takes_the_lanczos_path(tmp_path, capsys):
    """A smooth network (GELU, softmax attention): Lanczos path, through timm's attention."""
    import torch

    from hessaudit.inputs.checkpoints import save_checkpoint

    factory = tmp_path / "vit.py"
    factory.write_text(
        "import timm\n\n\n"
        "def vit(num_classes=5):\n"
        "    return timm.create_model('vit_tiny_patch16_224', pretrained=False,\n"
        "        num_classes=num_classes, img_size=16, patch_size=8, depth=1, embed_dim=24,\n"
        "        num_heads=2)\n"
    )
    spec = f"{factory}:vit"
    from hessaudit.inputs.models import build_model

    with torch.random.fork_rng():
        torch.manual_seed(0)
        pre = build_model(spec, num_classes=5).state_dict()
        ft = {
            k: v + 0.02 * torch.randn_like(v) if v.is_floating_point() else v
            for k, v in pre.items()
        }
    save_checkpoint(tmp_path / "pre.safetensors", pre)
    save_checkpoint(tmp_path / "ft.safetensors", ft)
    code = run(
        [
            "measure",
            str(tmp_path / "pre.safetensors"),
            str(tmp_path / "ft.safetensors"),
            "--model",
            spec,
            "--data",
            "digits-pretrain",
            "--input-size",
            "16",
            "--samples",
            "4",
            "--include",
            "blocks.0.attn.*",
            "--lanczos-steps",
            "6",
            "--spectrum-samples",
            "4",
            "--json",
            "-",
        ]
    )
    assert code == 0
    document = json.loads(capsys.readouterr().out)
    names = [layer["name"] for layer in document["layers"]]
    assert names == ["blocks.0.attn.qkv.weight", "blocks.0.attn.proj.weight"]
    for layer in document["layers"]:
        assert layer["engine_path"] == "lanczos"
        assert layer["quad_pos"] >= layer["quad_raw"] - 1e-6  # H+ >= H in the Loewner order
        assert layer["top_eig"] is not None and math.isfinite(layer["trace"])
