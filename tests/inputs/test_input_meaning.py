"""Issue 12, section 9: the inputs are what the user meant. Through the CLI.

* integer image arrays are scaled like torchvision's ToTensor (uint8 / 255, uint16 / 65535),
  before the model's mean/std, and the scaling is recorded (``inputs.data_scaling``);
* channels-last arrays are transposed with a warning; other channel mismatches are errors
  with a hint; a shape mismatch in the first forward pass names the data file, its
  per-example shape and what the model expects;
* ``--mean``, ``--std``, ``--interpolation``, ``--crop-pct`` (timm's flags) exist for
  ``measure``, ``finetune`` and ``tune``, and the resolved data config is recorded;
* every flag named in an error or hint string of hessaudit exists;
* NaN or Inf in inputs, weights or losses, and complex or sparse weights: exit 1, one line.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from hessaudit.cli import main

ROOT = Path(__file__).resolve().parents[2]

MLP_FACTORY = '''
import torch
from torch import nn


def make_mlp(num_classes=10):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, num_classes))


class Pair(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        return self.fc(x.flatten(1)), None


def make_pair(num_classes=10):
    return Pair(num_classes)
'''


# --------------------------------------------------------------------------- helpers


def run_cli(args: list, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return int(exc.value.code), captured.out, captured.err


def assert_one_error(code: int, err: str, *needles: str) -> str:
    """Exit 1, exactly one ``error:`` line (warnings may precede it), no traceback."""
    assert code == 1, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    others = [line for line in err.splitlines() if line and not line.startswith("warning:")]
    assert others == errors, err
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def save_npz(path: Path, **arrays) -> Path:
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    return path


def digits_arrays(n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """n digits as uint8 pixels 0..255 (N, 1, 8, 8) and their labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.round(bunch.images[:n] * 255.0 / 16.0).astype(np.uint8)[:, None]
    return x, bunch.target[:n].astype(np.int64)


def measure_args(pair, data, *extra) -> list:
    return [
        "measure", pair.pretrained, pair.finetuned, "--model", pair.spec, "--data", data,
        "--no-spectrum", "--quiet", *extra,
    ]


def audit(pair, data, tmp_path: Path, capsys, *extra, name: str = "a.json") -> dict:
    out = tmp_path / name
    code, _, err = run_cli(measure_args(pair, data, "--json", out, *extra), capsys)
    assert code == 0, err
    return json.loads(out.read_text())


def numbers(document: dict) -> list[float]:
    return [layer["hcal"] for layer in document["layers"]] + [
        document["bound"], document["train_loss"], document["C"],
    ]


@pytest.fixture
def mlp_spec(tmp_path: Path) -> str:
    path = tmp_path / "mlpnet.py"
    path.write_text(MLP_FACTORY)
    return f"{path}:make_mlp"


# --------------------------------------------------------------------------- scaling


def test_uint8_npz_gives_the_same_audit_as_float_over_255(tmp_path, tiny_checkpoints, capsys):
    x, y = digits_arrays(24)
    u8 = save_npz(tmp_path / "u8.npz", x=x, y=y)
    f32 = save_npz(tmp_path / "f32.npz", x=x.astype(np.float32) / 255.0, y=y)
    a = audit(tiny_checkpoints, u8, tmp_path, capsys, name="u8.json")
    b = audit(tiny_checkpoints, f32, tmp_path, capsys, name="f32.json")
    assert a["inputs"]["data_scaling"] == "uint8/255"
    assert b["inputs"]["data_scaling"] == "none"
    assert a["inputs"]["data_summary"]["scaling"] == "uint8/255"
    assert numbers(a) == pytest.approx(numbers(b), rel=1e-6)
    # fed unscaled (the old behaviour), the numbers would be far off
    raw = save_npz(tmp_path / "raw.npz", x=x.astype(np.float32), y=y)
    c = audit(tiny_checkpoints, raw, tmp_path, capsys, name="raw.json")
    assert c["train_loss"] != pytest.approx(a["train_loss"], rel=1e-2)


def test_uint16_is_divided_by_65535(tmp_path, tiny_checkpoints, capsys):
    x, y = digits_arrays(24)
    wide = (x.astype(np.uint16) * 257).astype(np.uint16)  # 255 -> 65535
    a = audit(tiny_checkpoints, save_npz(tmp_path / "u16.npz", x=wide, y=y), tmp_path, capsys)
    b = audit(
        tiny_checkpoints, save_npz(tmp_path / "f.npz", x=wide / 65535.0, y=y), tmp_path, capsys,
        name="b.json",
    )
    assert a["inputs"]["data_scaling"] == "uint16/65535"
    assert numbers(a) == pytest.approx(numbers(b), rel=1e-6)


def test_float_pixels_in_0_255_are_used_as_they_are_with_a_warning(
    tmp_path, tiny_checkpoints, capsys
):
    x, y = digits_arrays(12)
    data = save_npz(tmp_path / "f255.npz", x=x.astype(np.float32), y=y)
    u8 = save_npz(tmp_path / "u8.npz", x=x, y=y)
    out = tmp_path / "a.json"
    code, _, err = run_cli(
        measure_args(tiny_checkpoints, data, "--eval-data", u8, "--json", out), capsys
    )
    assert code == 0, err
    assert "warning:" in err and "f255.npz" in err and "unscaled 8-bit" in err
    inputs = json.loads(out.read_text())["inputs"]
    assert inputs["data_scaling"] == "none" and inputs["eval_data_scaling"] == "uint8/255"


@pytest.mark.parametrize("dtype", ["int64", "int8", "uint32"])
def test_other_integer_dtypes_are_refused_with_a_hint(tmp_path, tiny_checkpoints, capsys, dtype):
    x, y = digits_arrays(8)
    data = save_npz(tmp_path / "ints.npz", x=x.astype(dtype) // 2, y=y)
    code, _, err = run_cli(measure_args(tiny_checkpoints, data), capsys)
    line = assert_one_error(code, err, "ints.npz", dtype)
    assert "uint8" in line


def test_finetune_records_the_scaling(tmp_path, digits_pretrained, capsys):
    x, y = digits_arrays(48)
    data = save_npz(tmp_path / "u8.npz", x=x, y=y % 5)
    out = tmp_path / "run"
    code, _, err = run_cli(
        ["finetune", "--model", "hessaudit.zoo:digits_cnn", "--pretrained", digits_pretrained,
         "--data", data, "--out", out, "--epochs", "1", "--loss", "ce", "--quiet"],
        capsys,
    )
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    assert '"scaling": "uint8/255"' in json.dumps(config)


# --------------------------------------------------------------------------- layout and shape


def test_channels_last_is_transposed_with_a_warning(tmp_path, tiny_checkpoints, capsys):
    x, y = digits_arrays(24)
    nchw = audit(tiny_checkpoints, save_npz(tmp_path / "a.npz", x=x, y=y), tmp_path, capsys)
    nhwc_path = save_npz(tmp_path / "nhwc.npz", x=x.transpose(0, 2, 3, 1), y=y)
    out = tmp_path / "nhwc.json"
    code, _, err = run_cli(measure_args(tiny_checkpoints, nhwc_path, "--json", out), capsys)
    assert code == 0, err
    assert "warning:" in err and "channels-last" in err and "nhwc.npz" in err
    nhwc = json.loads(out.read_text())
    assert numbers(nhwc) == pytest.approx(numbers(nchw), rel=1e-6)
    steps = nhwc["inputs"]["data_summary"]["preprocessing"]
    assert any("channels-last" in step for step in steps)


def test_channels_last_28x28_digits_no_longer_says_28_channels(tmp_path, tiny_checkpoints, capsys):
    rng = np.random.default_rng(0)
    data = save_npz(
        tmp_path / "mnist.npz", x=rng.integers(0, 256, (12, 28, 28, 1), dtype=np.uint8),
        y=np.arange(12) % 10,
    )
    code, _, err = run_cli(measure_args(tiny_checkpoints, data), capsys)
    assert code == 0, err
    assert "28 channels" not in err


def test_images_without_a_channel_axis_are_grayscale(tmp_path, tiny_checkpoints, capsys):
    x, y = digits_arrays(16)
    a = audit(tiny_checkpoints, save_npz(tmp_path / "a.npz", x=x, y=y), tmp_path, capsys)
    nhw = save_npz(tmp_path / "nhw.npz", x=x[:, 0], y=y)  # (N, 8, 8), as MNIST loads
    out = tmp_path / "nhw.json"
    code, _, err = run_cli(measure_args(tiny_checkpoints, nhw, "--json", out), capsys)
    assert code == 0, err
    assert "warning:" in err and "no channel axis" in err
    assert numbers(json.loads(out.read_text())) == pytest.approx(numbers(a), rel=1e-6)


@pytest.mark.parametrize(
    ("shape", "needles"),
    [
        ((6, 3, 8, 8), ["images have 3 channels", "takes 1", "grayscale"]),
        ((6, 8, 8, 5), ["images have 8 channels", "takes 1", "--data"]),
    ],
)
def test_channel_mismatch_is_an_error_with_a_hint(
    tmp_path, tiny_checkpoints, capsys, shape, needles
):
    data = save_npz(tmp_path / "rgb.npz", x=np.zeros(shape, np.float32), y=np.arange(6) % 10)
    code, _, err = run_cli(measure_args(tiny_checkpoints, data), capsys)
    assert_one_error(code, err, "rgb.npz", *needles)


def test_shape_mismatch_names_the_file_its_shape_and_the_model(tmp_path, mlp_spec, capsys):
    from hessaudit.inputs.checkpoints import save_checkpoint

    spec_file, _ = mlp_spec.rsplit(":", 1)
    import importlib.util

    module_spec = importlib.util.spec_from_file_location("mlpnet_for_test", spec_file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    state = module.make_mlp().state_dict()
    pre, ft = tmp_path / "pre.safetensors", tmp_path / "ft.safetensors"
    save_checkpoint(pre, state)
    save_checkpoint(ft, {k: v + 0.01 for k, v in state.items()})
    rng = np.random.default_rng(0)
    data = save_npz(
        tmp_path / "big.npz", x=rng.random((10, 1, 28, 28), dtype=np.float32),
        y=np.arange(10) % 10,
    )
    args = ["measure", pre, ft, "--model", mlp_spec, "--data", data, "--no-spectrum", "-q"]
    code, _, err = run_cli(args, capsys)
    line = assert_one_error(code, err, "big.npz", "(1, 28, 28)", "Linear(64, 16)", "--input-size 8")
    assert "mat1 and mat2" in line  # torch's own words are kept, after the file and shapes
    code, _, err = run_cli([*args, "--input-size", "8"], capsys)  # the hint works
    assert code == 0, err


def test_model_returning_a_tuple_is_refused(tmp_path, capsys):
    from hessaudit.inputs.checkpoints import save_checkpoint

    factory = tmp_path / "pairnet.py"
    factory.write_text(MLP_FACTORY)
    fc = torch.nn.Linear(64, 10)
    save_checkpoint(tmp_path / "p.safetensors", {f"fc.{k}": v for k, v in fc.state_dict().items()})
    code, _, err = run_cli(
        ["measure", tmp_path / "p.safetensors", tmp_path / "p.safetensors", "--model",
         f"{factory}:make_pair", "--data", "digits", "--samples", "8", "--no-spectrum", "-q"],
        capsys,
    )
    assert_one_error(code, err, "make_pair", "tuple", "logits")


def test_finetune_shape_mismatch_names_the_data(tmp_path, mlp_spec, capsys):
    from hessaudit.inputs.checkpoints import save_checkpoint

    spec_file = mlp_spec.rsplit(":", 1)[0]
    ns: dict = {}
    exec(compile(Path(spec_file).read_text(), spec_file, "exec"), ns)
    pre = tmp_path / "pre.safetensors"
    save_checkpoint(pre, ns["make_mlp"]().state_dict())
    data = save_npz(
        tmp_path / "wide.npz", x=np.zeros((8, 1, 9, 9), np.float32), y=np.arange(8) % 2
    )
    out = tmp_path / "run"
    code, _, err = run_cli(
        ["finetune", "--model", mlp_spec, "--pretrained", pre, "--data", data, "--out", out,
         "--epochs", "1", "--loss", "ce", "--quiet"],
        capsys,
    )
    assert_one_error(code, err, "wide.npz", "(1, 9, 9)", "Linear(64, 16)")
    assert not (out / "final.safetensors").exists()


# --------------------------------------------------------------------------- timm's flags


def test_data_config_flags_are_recorded_and_used(tmp_path, tiny_checkpoints, capsys):
    plain = audit(tiny_checkpoints, "digits", tmp_path, capsys, "--samples", "16")
    cfg = plain["inputs"]["input_config"]
    assert cfg["mean"] is None and cfg["interpolation"] == "bilinear" and cfg["crop_pct"] == 1.0
    flagged = audit(
        tiny_checkpoints, "digits", tmp_path, capsys, "--samples", "16", "--input-size", "12",
        "--mean", "0.25", "--std", "0.5", "--interpolation", "bicubic", "--crop-pct", "0.875",
        name="flagged.json",
    )
    cfg = flagged["inputs"]["input_config"]
    assert cfg == {
        "channels": 1, "size": [12, 12], "mean": [0.25], "std": [0.5],
        "interpolation": "bicubic", "crop_pct": 0.875, "crop_mode": "center",
    }
    steps = flagged["inputs"]["data_summary"]["preprocessing"]
    assert "resized 8x8 -> 12x12 (bicubic, crop_pct 0.875, center)" in steps
    assert flagged["inputs"]["data_summary"]["shape"] == [1, 12, 12]
    assert numbers(flagged) != pytest.approx(numbers(plain), rel=1e-3)


@pytest.fixture
def rgb_pair(tmp_path: Path):
    """The tiny factory with 3 input channels, as a checkpoint pair (no timm config)."""
    from hessaudit.inputs.checkpoints import save_checkpoint
    from tests.files import TINY_FACTORY_SOURCE, CheckpointPair, perturbed

    factory = tmp_path / "rgbnet.py"
    factory.write_text(
        TINY_FACTORY_SOURCE + "\n\ndef make_rgb(num_classes=4):\n"
        "    return make_tiny(num_classes, in_chans=3)\n"
    )
    ns: dict = {}
    exec(compile(factory.read_text(), str(factory), "exec"), ns)
    pre = ns["make_rgb"]().state_dict()
    ft = perturbed(pre, seed=1)
    save_checkpoint(tmp_path / "rgb_pre.safetensors", pre)
    save_checkpoint(tmp_path / "rgb_ft.safetensors", ft)
    return CheckpointPair(
        f"{factory}:make_rgb", tmp_path / "rgb_pre.safetensors", tmp_path / "rgb_ft.safetensors",
        pre, ft, 4,
    )


def test_mean_takes_commas_or_repeats(tmp_path, rgb_pair, capsys):
    data = save_npz(
        tmp_path / "rgb.npz", x=np.random.default_rng(0).random((6, 3, 8, 8), np.float32),
        y=np.arange(6) % 4,
    )
    a = audit(rgb_pair, data, tmp_path, capsys, "--mean", "0.4,0.5,0.6", "--std", "0.2 0.25 0.3")
    b = audit(
        rgb_pair, data, tmp_path, capsys, "--mean", "0.4", "--mean", "0.5", "--mean", "0.6",
        "--std", "0.2", "--std", "0.25", "--std", "0.3", name="b.json",
    )
    assert a["inputs"]["input_config"]["mean"] == [0.4, 0.5, 0.6]
    assert a["inputs"]["input_config"]["std"] == [0.2, 0.25, 0.3]
    assert numbers(a) == numbers(b)
    c = audit(rgb_pair, data, tmp_path, capsys, name="c.json")
    assert numbers(c) != pytest.approx(numbers(a), rel=1e-3)  # the flags were used


def test_timm_models_resolve_their_own_config() -> None:
    """What the flags do not give comes from the model's timm config."""
    from hessaudit.inputs.models import build_model, input_config

    cfg = input_config(build_model("test_resnet", num_classes=4), input_size=16, mean=0.2)
    assert cfg.mean == (0.2, 0.2, 0.2) and cfg.std == (0.5, 0.5, 0.5)
    assert (cfg.interpolation, cfg.crop_pct, cfg.crop_mode) == ("bilinear", 0.95, "center")
    vit = input_config(build_model("test_vit", num_classes=4), crop_pct=1.0)
    assert vit.size == (160, 160) and vit.interpolation == "bicubic" and vit.crop_pct == 1.0


def test_mean_with_the_wrong_count_names_the_flag(tmp_path, rgb_pair, capsys):
    code, _, err = run_cli(
        measure_args(rgb_pair, "digits", "--mean", "0.1,0.2", "--samples", "4"), capsys
    )
    assert_one_error(code, err, "--mean", "2 values", "3 channel")


def test_one_channel_timm_model_gets_a_one_channel_config(tmp_path, capsys):
    """timm's config says 3 channels even for in_chans=1; hessaudit asks the model."""
    import timm

    from hessaudit.inputs.models import input_config

    model = timm.create_model("test_resnet", pretrained=False, num_classes=3, in_chans=1)
    cfg = input_config(model, input_size=16)
    assert cfg.channels == 1 and cfg.mean == (0.5,) and cfg.std == (0.5,)


@pytest.mark.parametrize("command", ["measure", "finetune", "tune"])
def test_commands_have_timms_data_flags(command, capsys):
    code, out, _ = run_cli([command, "--help"], capsys)
    assert code == 0
    text = re.sub(r"\x1b\[[0-9;]*m", "", out)
    for flag in ("--input-size", "--mean", "--std", "--interpolation", "--crop-pct"):
        assert flag in text, (command, flag)


# --------------------------------------------------------------------------- hints name real flags


def _cli_flags() -> set[str]:
    import typer

    from hessaudit.cli import app

    group = typer.main.get_command(app)
    flags = {opt for p in group.params for opt in (*p.opts, *p.secondary_opts)}
    for command in group.commands.values():
        for param in command.params:
            flags.update(o for o in (*param.opts, *param.secondary_opts) if o.startswith("--"))
    return flags


def _message_strings(tree: ast.AST) -> list[tuple[int, str]]:
    """String pieces of every user-facing message: the arguments of HessauditError(...),
    warnings.warn(...), _print_error(...), and every ``hint=`` keyword."""
    found: list[tuple[int, str]] = []

    def strings(node: ast.AST) -> None:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                found.append((sub.lineno, sub.value))

    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
        if name in ("HessauditError", "warn", "_print_error", "_no_match", "no_match_error"):
            for arg in node.args:
                strings(arg)
            for keyword in node.keywords:
                strings(keyword.value)
        else:
            for keyword in node.keywords:
                if keyword.arg == "hint":
                    strings(keyword.value)
    for node in ast.walk(tree):  # hint = "..." assembled before the raise
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "hint" for t in node.targets
        ):
            strings(node.value)
    return found


def test_every_flag_named_in_a_message_exists() -> None:
    flags = _cli_flags()
    assert {"--mean", "--std", "--interpolation", "--crop-pct", "--input-size"} <= flags
    unknown = []
    files = sorted((ROOT / "hessaudit").rglob("*.py"))
    assert len(files) > 20
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        for lineno, text in _message_strings(tree):
            for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text):
                if flag not in flags:
                    unknown.append(f"{path.relative_to(ROOT)}:{lineno}: {flag}")
    assert not unknown, "hints name flags that do not exist:\n" + "\n".join(unknown)


def test_the_flag_scanner_can_fail(tmp_path) -> None:
    source = 'raise HessauditError("bad", hint="pass --channels 3")\nhint = "use --no-such"\n'
    texts = [text for _, text in _message_strings(ast.parse(source))]
    found = {f for t in texts for f in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", t)}
    assert found == {"--channels", "--no-such"} and not found <= _cli_flags()


# --------------------------------------------------------------------------- NaN, complex, sparse


@pytest.mark.parametrize(("value", "kind"), [(np.nan, "NaN"), (np.inf, "Inf")])
def test_nonfinite_input_example_is_named(tmp_path, tiny_checkpoints, capsys, value, kind):
    x, y = digits_arrays(20)
    xf = x.astype(np.float32) / 255.0
    xf[13, 0, 2, 5] = value
    data = save_npz(tmp_path / "bad.npz", x=xf, y=y)
    code, _, err = run_cli(measure_args(tiny_checkpoints, data), capsys)
    assert_one_error(code, err, "bad.npz", "example 13", kind)


def test_float64_values_beyond_float32_are_named(tmp_path, tiny_checkpoints, capsys):
    x, y = digits_arrays(10)
    xf = x.astype(np.float64)
    xf[4, 0, 0, 0] = 1e300
    data = save_npz(tmp_path / "huge.npz", x=xf, y=y)
    code, _, err = run_cli(measure_args(tiny_checkpoints, data), capsys)
    assert_one_error(code, err, "huge.npz", "example 4")
    assert err.count("\n") == 1  # no numpy overflow warning either


def test_normalization_overflow_is_named(tmp_path, tiny_checkpoints, capsys):
    x, y = digits_arrays(10)
    xf = x.astype(np.float32)
    xf[6, 0, 0, 0] = 3e38
    data = save_npz(tmp_path / "edge.npz", x=xf, y=y)
    code, _, err = run_cli(measure_args(tiny_checkpoints, data, "--std", "0.01"), capsys)
    assert_one_error(code, err, "edge.npz", "example 6")


@pytest.mark.parametrize("which", ["pretrained", "finetuned"])
def test_nan_in_weights_names_file_and_tensor(tmp_path, tiny_checkpoints, capsys, which):
    from hessaudit.inputs.checkpoints import save_checkpoint

    state = dict(getattr(tiny_checkpoints, f"{which}_state"))
    state["conv1.weight"] = state["conv1.weight"].clone()
    state["conv1.weight"][0, 0, 0, 0] = float("nan")
    bad = tmp_path / "nanweights.safetensors"
    save_checkpoint(bad, state)
    pair = tiny_checkpoints
    args = ["measure", bad if which == "pretrained" else pair.pretrained,
            bad if which == "finetuned" else pair.finetuned, "--model", pair.spec,
            "--data", "digits", "--samples", "8", "--no-spectrum", "-q"]
    code, _, err = run_cli(args, capsys)
    assert_one_error(code, err, "nanweights.safetensors", "conv1.weight", "NaN")


def test_nonfinite_loss_names_the_example(tmp_path, tiny_checkpoints, capsys):
    from hessaudit.inputs.checkpoints import save_checkpoint

    state = dict(tiny_checkpoints.finetuned_state)
    state["fc.weight"] = torch.full_like(state["fc.weight"], 3e38)  # finite, logits overflow
    ft = tmp_path / "overflow.safetensors"
    save_checkpoint(ft, state)
    out = tmp_path / "audit.json"
    code, _, err = run_cli(
        ["measure", tiny_checkpoints.pretrained, ft, "--model", tiny_checkpoints.spec,
         "--data", "digits", "--samples", "8", "--no-spectrum", "-q", "--json", out],
        capsys,
    )
    assert_one_error(code, err, "loss on example", "--data digits", "NaN")
    assert not out.exists()


def test_nonfinite_numbers_never_reach_the_json() -> None:
    from hessaudit.audit.validate import check_finite_document, first_nonfinite
    from hessaudit.errors import HessauditError

    document = {"layers": [{"name": "conv1.weight", "hcal": 1.0}, {"name": "fc", "hcal": 0.5}],
                "bound": 2.0}
    assert first_nonfinite(document) is None
    document["layers"][1]["hcal"] = float("inf")
    assert first_nonfinite(document) == ("layers[1].hcal", float("inf"))
    with pytest.raises(HessauditError, match=r"layers\[1\]\.hcal \(layer fc\) is inf"):
        check_finite_document(document, what="the audit")


@pytest.mark.parametrize(
    ("make", "needles"),
    [
        (lambda t: t.to(torch.complex64), ["complex", "complex64"]),
        (lambda t: t.to_sparse(), ["sparse"]),
    ],
    ids=["complex", "sparse"],
)
@pytest.mark.parametrize("command", ["measure", "inspect"])
def test_complex_and_sparse_weights_are_refused(
    tmp_path, tiny_checkpoints, capsys, make, needles, command
):
    state = dict(tiny_checkpoints.finetuned_state)
    state["fc.weight"] = make(state["fc.weight"])
    bad = tmp_path / "odd.pt"
    torch.save(state, bad)
    if command == "measure":
        args = ["measure", tiny_checkpoints.pretrained, bad, "--model", tiny_checkpoints.spec,
                "--data", "digits", "--samples", "8", "--no-spectrum", "-q"]
    else:
        args = ["inspect", tiny_checkpoints.pretrained, bad]
    code, _, err = run_cli(args, capsys)
    assert_one_error(code, err, "odd.pt", "fc.weight", *needles)
    assert err.count("\n") == 1  # not even torch's warnings
