"""Issue 7: every row of the bad-input table in docs/errors.md, run through the CLI.

Each case must end with exit code 1, exactly one ``error: ...`` line on stderr that names the
file or flag at fault, no Python traceback, and no output file created or changed (every file
under the test folder keeps its bytes and mtime; no new file appears).

The cases run ``hessaudit.cli.main`` in-process on the tiny factory model of conftest.py
(``measure``/``inspect``) and on ``hessaudit.zoo:digits_cnn`` (``finetune``); they all fail
before any real work.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from hessaudit.cli import main

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
ZOO = "hessaudit.zoo:digits_cnn"


# --------------------------------------------------------------------------- helpers


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return int(exc.value.code), captured.out, captured.err


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every file and folder under ``root``: SHA-256 (files) and mtime in ns."""
    state: dict[str, tuple[str, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in dirnames:
            p = Path(dirpath) / name
            state[str(p.relative_to(root)) + "/"] = ("dir", 0)
        for name in filenames:
            p = Path(dirpath) / name
            try:
                digest = hashlib.sha256(p.read_bytes()).hexdigest()
            except OSError:
                digest = "unreadable"
            state[str(p.relative_to(root))] = (digest, p.stat().st_mtime_ns)
    return state


class Evil:
    """Unpickling this runs code: it creates the file named by ``marker``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


@dataclass
class Opaque:
    """A harmless custom class: still not loadable with weights_only=True."""

    value: int = 3


@dataclass
class Env:
    """What every case builds on: the tiny checkpoint pair, a factory and output paths."""

    tmp: Path
    pre: Path
    ft: Path
    spec: str
    factory: Path
    ft_state: dict[str, torch.Tensor]
    pre_state: dict[str, torch.Tensor]
    digits_pre: Path
    existing_json: Path
    new_csv: Path
    marker: Path = field(init=False)

    def __post_init__(self) -> None:
        self.marker = self.tmp / "PWNED"

    def measure(self, *extra, pre=None, ft=None, model=None, data="digits", outputs=True):
        args = [
            "measure", pre or self.pre, ft or self.ft, "--model", model or self.spec,
            "--data", data, "--samples", "16", "--no-spectrum",
        ]
        if outputs:
            args += ["--json", self.existing_json, "--csv", self.new_csv]
        return [*args, *extra]

    def finetune(self, *extra, out=None, data="digits"):
        return [
            "finetune", "--model", ZOO, "--pretrained", self.digits_pre, "--data", data,
            "--out", out or self.tmp / "run", "--epochs", "1", "--samples", "64", "--quiet",
            "--inject-noise", "symmetric:0.2", "--noise-matrix", "injected", *extra,
        ]

    def file(self, name: str, data: bytes) -> Path:
        p = self.tmp / name
        p.write_bytes(data)
        return p

    def npz(self, name: str, **arrays) -> Path:
        p = self.tmp / name
        with open(p, "wb") as fh:
            np.savez(fh, **arrays)
        return p

    def safetensors(self, name: str, state: dict[str, torch.Tensor]) -> Path:
        from safetensors.torch import save_file

        p = self.tmp / name
        save_file({k: v.contiguous() for k, v in state.items()}, str(p))
        return p

    def torch_file(self, name: str, obj) -> Path:
        p = self.tmp / name
        torch.save(obj, p)
        return p


@pytest.fixture(scope="module")
def digits_pretrained(tmp_path_factory) -> Path:
    """A (random) 5-class digits_cnn checkpoint for the finetune cases."""
    from hessaudit.inputs.checkpoints import save_checkpoint
    from hessaudit.zoo import digits_cnn

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = digits_cnn(num_classes=5)
    path = tmp_path_factory.mktemp("digits_pre") / "pre.safetensors"
    save_checkpoint(path, model.state_dict())
    return path


@pytest.fixture
def env(tmp_path, tiny_checkpoints, factory_file, digits_pretrained) -> Env:
    existing = tmp_path / "existing.json"
    existing.write_text('{"previous": "audit"}\n')
    os.utime(existing, ns=(1_000_000_000, 1_000_000_000))
    return Env(
        tmp=tmp_path,
        pre=tiny_checkpoints.pretrained,
        ft=tiny_checkpoints.finetuned,
        spec=tiny_checkpoints.spec,
        factory=factory_file,
        ft_state=tiny_checkpoints.finetuned_state,
        pre_state=tiny_checkpoints.pretrained_state,
        digits_pre=digits_pretrained,
        existing_json=existing,
        new_csv=tmp_path / "layers.csv",
    )


# --------------------------------------------------------------------------- the table
#
# Each builder returns (argv, substrings the error line must contain). Keep in sync with
# docs/errors.md (a test checks that every case id appears there).


def _ckpt_missing(e: Env):
    return e.measure(pre=e.tmp / "nope.safetensors"), ["nope.safetensors", "does not exist"]


def _ckpt_parent_is_file(e: Env):
    path = e.pre / "inner.safetensors"  # the parent is a regular file
    return e.measure(pre=path), ["inner.safetensors", "does not exist"]


def _ckpt_directory(e: Env):
    d = e.tmp / "ckpt_dir"
    d.mkdir()
    return e.measure(ft=d), ["ckpt_dir", "directory"]


def _ckpt_unreadable(e: Env):
    p = e.file("locked.safetensors", e.pre.read_bytes())
    p.chmod(0)
    return e.measure(pre=p), ["locked.safetensors", "cannot be read"]


def _ckpt_empty(e: Env):
    return e.measure(ft=e.file("empty.safetensors", b"")), ["empty.safetensors", "empty"]


def _ckpt_truncated(e: Env):
    data = e.ft.read_bytes()
    p = e.file("trunc.safetensors", data[: len(data) // 2])
    return e.measure(ft=p), ["trunc.safetensors", "not a valid safetensors"]


def _ckpt_corrupt_header(e: Env):
    data = bytearray(e.ft.read_bytes())
    n = int.from_bytes(data[:8], "little")
    data[8 + 1 : 8 + n - 1] = b"#" * (n - 2)  # keep the braces and length, garble the JSON
    p = e.file("badheader.safetensors", bytes(data))
    return e.measure(ft=p), ["badheader.safetensors", "not a valid safetensors"]


def _ckpt_header_too_long(e: Env):
    data = bytearray(e.ft.read_bytes())
    data[:8] = (10**12).to_bytes(8, "little")
    p = e.file("hugeheader.safetensors", bytes(data))
    return e.measure(ft=p), ["hugeheader.safetensors", "not a valid safetensors"]


def _ckpt_not_torch(e: Env):
    p = e.file("notes.pt", b"these are not the weights you are looking for\n" * 4)
    return e.measure(pre=p), ["notes.pt", "not a PyTorch checkpoint"]


def _ckpt_truncated_zip(e: Env):
    full = e.torch_file("full.pt", e.pre_state)
    data = full.read_bytes()
    full.unlink()
    p = e.file("cut.pt", data[: len(data) // 2])
    return e.measure(pre=p), ["cut.pt", "truncated or corrupt"]


def _ckpt_malicious_zip(e: Env):
    p = e.torch_file("evil.pt", {"conv1.weight": torch.zeros(1), "x": Evil(str(e.marker))})
    return e.measure(pre=p), ["evil.pt", "non-tensor Python objects"]


def _ckpt_malicious_pickle(e: Env):
    payload = pickle.dumps({"x": Evil(str(e.marker))}, protocol=2)
    p = e.file("evil.pth", payload)
    return e.measure(pre=p), ["evil.pth", "not loaded"]


def _ckpt_custom_class(e: Env):
    p = e.torch_file("opaque.pt", {**e.ft_state, "extra": Opaque()})
    return e.measure(ft=p), ["opaque.pt", "non-tensor Python objects"]


def _ckpt_non_tensor_entries(e: Env):
    p = e.torch_file("listy.pt", {**e.ft_state, "history": [1.0, 2.0]})
    return e.measure(ft=p), ["listy.pt", "'history'", "not a tensor"]


def _ckpt_single_tensor(e: Env):
    p = e.torch_file("tensor.pt", torch.zeros(3))
    return e.measure(ft=p), ["tensor.pt", "single tensor"]


def _ckpt_other_architecture(e: Env):
    from hessaudit.zoo import digits_cnn

    p = e.safetensors("other_arch.safetensors", digits_cnn(num_classes=10).state_dict())
    return e.measure(pre=p), ["share no layers", "different architectures"]


def _ckpt_wrong_model(e: Env):
    return e.measure(model=ZOO), ["finetuned.safetensors", "does not fit the model"]


def _ckpt_nan(e: Env):
    state = {k: v.clone() for k, v in e.ft_state.items()}
    state["conv1.weight"][0, 0, 0, 0] = float("nan")
    p = e.safetensors("nan.safetensors", state)
    return e.measure(ft=p), ["nan.safetensors", "'conv1.weight'", "NaN"]


def _ckpt_inf(e: Env):
    state = {k: v.clone() for k, v in e.pre_state.items()}
    state["fc.weight"][0, 0] = float("inf")
    p = e.safetensors("inf.safetensors", state)
    return e.measure(pre=p), ["inf.safetensors", "'fc.weight'", "Inf"]


def _ckpt_all_unpaired(e: Env):
    state = {f"backbone.{k}": v for k, v in e.pre_state.items()}
    p = e.safetensors("renamed.safetensors", state)
    return e.measure(pre=p), ["share no layers", "pretrained: backbone."]


def _include_nothing(e: Env):
    return e.measure("--include", "blocks.*"), ["--include 'blocks.*'", "matches no tensor"]


def _num_classes_disagree(e: Env):
    return e.measure("--num-classes", "7"), ["--num-classes 7", "10 outputs"]


def _labels_out_of_range(e: Env):
    x = np.zeros((8, 1, 8, 8), dtype=np.float32)
    y = np.array([0, 1, 2, 3, 4, 5, 11, 12])
    p = e.npz("labels.npz", x=x, y=y)
    return e.measure(data=str(p)), ["labels.npz", "label"]


def _factory_raises(e: Env):
    return e.measure(model=f"{e.factory}:make_raising"), ["--model", "make_raising", "raised"]


def _factory_not_module(e: Env):
    return e.measure(model=f"{e.factory}:make_not_module"), ["--model", "make_not_module"]


def _factory_missing_function(e: Env):
    return e.measure(model=f"{e.factory}:no_such_fn"), ["--model", "no_such_fn"]


def _timm_unknown(e: Env):
    return e.measure(model="resnet1888"), ["--model resnet1888", "did you mean", "resnet18"]


def _data_missing(e: Env):
    return e.measure(data=str(e.tmp / "no_data")), ["no_data"]


def _eval_data_missing(e: Env):
    return e.measure("--eval-data", e.tmp / "no_eval"), ["no_eval"]


def _data_empty_folder(e: Env):
    d = e.tmp / "empty_folder"
    d.mkdir()
    return e.measure(data=str(d)), ["empty_folder", "no class sub-folders"]


def _data_class_without_images(e: Env):
    from tests.files import write_png

    root = e.tmp / "imgs"
    write_png(root / "a" / "0.png", size=(8, 8), mode="L")
    (root / "b").mkdir()
    return e.measure(data=str(root)), ["imgs", "'b'", "no image files"]


def _data_no_readable_image(e: Env):
    root = e.tmp / "broken_imgs"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        (root / cls / "0.png").write_bytes(b"not a png at all")
    return e.measure(data=str(root)), ["broken_imgs", "no readable images"]


def _npz_without_x(e: Env):
    p = e.npz("nox.npz", y=np.zeros(4, dtype=np.int64))
    return e.measure(data=str(p)), ["nox.npz", "x"]


def _npz_without_y(e: Env):
    p = e.npz("noy.npz", x=np.zeros((4, 1, 8, 8), dtype=np.float32))
    return e.measure(data=str(p)), ["noy.npz", "y"]


def _npz_length_mismatch(e: Env):
    p = e.npz("len.npz", x=np.zeros((5, 1, 8, 8), dtype=np.float32), y=np.zeros(4, np.int64))
    return e.measure(data=str(p)), ["len.npz", "4", "5"]


def _npz_wrong_x_dtype(e: Env):
    p = e.npz("strx.npz", x=np.array(["a", "b"]), y=np.zeros(2, np.int64))
    return e.measure(data=str(p)), ["strx.npz", "numeric"]


def _npz_float_labels(e: Env):
    p = e.npz("fy.npz", x=np.zeros((2, 1, 8, 8), np.float32), y=np.array([0.5, 1.0]))
    return e.measure(data=str(p)), ["fy.npz", "integer"]


def _npz_not_npz(e: Env):
    p = e.file("junk.npz", b"PK\x03\x04 but not really a zip")
    return e.measure(data=str(p)), ["junk.npz"]


def _samples_zero(e: Env):
    args = e.measure()
    args[args.index("--samples") + 1] = "0"
    return args, ["--samples"]


def _samples_too_many(e: Env):
    args = e.measure()
    args[args.index("--samples") + 1] = "100000"
    return args, ["--samples 100000", "digits"]


def _measure_batch_size_zero(e: Env):
    return e.measure("--batch-size", "0"), ["--batch-size"]


def _measure_lanczos_steps_zero(e: Env):
    return e.measure("--lanczos-steps", "0"), ["--lanczos-steps"]


def _measure_negative_tol(e: Env):
    return e.measure("--tol", "-1"), ["--tol"]


def _measure_bad_reduce(e: Env):
    return e.measure("--reduce", "median"), ["--reduce"]


def _measure_bad_loss_bound(e: Env):
    return e.measure("--loss-bound", "-2"), ["--loss-bound"]


def _measure_cuda_missing(e: Env):
    return e.measure("--device", "cuda"), ["--device cuda", "CUDA is not available"]


def _measure_not_an_int(e: Env):
    return e.measure("--batch-size", "many"), ["--batch-size", "integer"]


def _finetune_negative_radius(e: Env):
    return e.finetune("--radius", "-1"), ["--radius -1"]


def _finetune_epochs_zero(e: Env):
    args = e.finetune()
    args[args.index("--epochs") + 1] = "0"
    return args, ["--epochs 0"]


def _finetune_rate_one(e: Env):
    args = e.finetune()
    args[args.index("--inject-noise") + 1] = "symmetric:1.0"
    return args, ["--inject-noise", "[0, 1)"]


def _finetune_matrix_rate(e: Env):
    args = e.finetune()
    args[args.index("--noise-matrix") + 1] = "symmetric:1.5"
    return args, ["--noise-matrix", "[0, 1)"]


def _finetune_singular_matrix(e: Env):
    p = e.tmp / "uniform.csv"
    p.write_text("\n".join(",".join(["0.1"] * 10) for _ in range(10)) + "\n")
    args = e.finetune()
    args[args.index("--noise-matrix") + 1] = str(p)
    return args, ["uniform.csv", "singular"]


def _finetune_invalid_matrix(e: Env):
    p = e.tmp / "rows.csv"
    rows = [["0.5" if i == j else "0" for j in range(10)] for i in range(10)]
    p.write_text("\n".join(",".join(r) for r in rows) + "\n")
    args = e.finetune()
    args[args.index("--noise-matrix") + 1] = str(p)
    return args, ["rows.csv", "sums to"]


def _finetune_missing_matrix_file(e: Env):
    args = e.finetune()
    args[args.index("--noise-matrix") + 1] = str(e.tmp / "nomatrix.csv")
    return args, ["nomatrix.csv", "does not exist"]


def _finetune_cuda_missing(e: Env):
    return e.finetune("--device", "cuda"), ["--device cuda", "CUDA"]


def _finetune_missing_pretrained(e: Env):
    args = e.finetune()
    args[args.index("--pretrained") + 1] = str(e.tmp / "gone.safetensors")
    return args, ["gone.safetensors", "does not exist"]


def _json_missing_folder(e: Env):
    args = [*e.measure(outputs=False), "--json", e.tmp / "nofolder" / "audit.json"]
    return args, ["audit.json", "nofolder", "does not exist"]


def _json_parent_is_file(e: Env):
    args = [*e.measure(outputs=False), "--json", e.existing_json / "audit.json"]
    return args, ["existing.json", "is a file, not a folder"]


def _json_read_only(e: Env):
    d = e.tmp / "ro"
    d.mkdir()
    d.chmod(0o555)
    args = [*e.measure(outputs=False), "--json", d / "audit.json"]
    return args, ["audit.json", "not writable"]


def _json_is_directory(e: Env):
    d = e.tmp / "a_dir"
    d.mkdir()
    return [*e.measure(outputs=False), "--json", d], ["a_dir", "directory"]


def _csv_missing_folder(e: Env):
    args = [*e.measure(outputs=False), "--csv", e.tmp / "nofolder" / "layers.csv"]
    return args, ["layers.csv", "does not exist"]


def _inspect_json_missing_folder(e: Env):
    args = ["inspect", e.pre, e.ft, "--json", e.tmp / "nofolder" / "d.json"]
    return args, ["d.json", "does not exist"]


def _out_existing_run(e: Env):
    run = e.tmp / "run"
    run.mkdir()
    (run / "config.json").write_text("{}\n")
    (run / "final.safetensors").write_bytes(e.pre.read_bytes())
    return e.finetune(out=run), ["--out", "already holds files", "--resume", "--overwrite"]


def _out_is_file(e: Env):
    return e.finetune(out=e.existing_json), ["--out", "existing.json", "not a folder"]


def _resume_nothing(e: Env):
    return ["finetune", "--resume", e.tmp / "nothing_here"], ["--resume", "nothing_here"]


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[Env], tuple[list, list[str]]]
    needs_non_root: bool = False


CASES = [
    # checkpoints
    Case("ckpt-missing", _ckpt_missing),
    Case("ckpt-parent-is-file", _ckpt_parent_is_file),
    Case("ckpt-directory", _ckpt_directory),
    Case("ckpt-unreadable", _ckpt_unreadable, needs_non_root=True),
    Case("ckpt-empty", _ckpt_empty),
    Case("ckpt-truncated-safetensors", _ckpt_truncated),
    Case("ckpt-corrupt-header", _ckpt_corrupt_header),
    Case("ckpt-header-length", _ckpt_header_too_long),
    Case("ckpt-not-torch", _ckpt_not_torch),
    Case("ckpt-truncated-zip", _ckpt_truncated_zip),
    Case("ckpt-code-pickle-zip", _ckpt_malicious_zip),
    Case("ckpt-code-pickle-raw", _ckpt_malicious_pickle),
    Case("ckpt-custom-class", _ckpt_custom_class),
    Case("ckpt-non-tensor", _ckpt_non_tensor_entries),
    Case("ckpt-single-tensor", _ckpt_single_tensor),
    Case("ckpt-other-architecture", _ckpt_other_architecture),
    Case("ckpt-wrong-model", _ckpt_wrong_model),
    Case("ckpt-nan", _ckpt_nan),
    Case("ckpt-inf", _ckpt_inf),
    Case("ckpt-all-unpaired", _ckpt_all_unpaired),
    Case("include-nothing", _include_nothing),
    # model
    Case("num-classes-disagree", _num_classes_disagree),
    Case("labels-out-of-range", _labels_out_of_range),
    Case("factory-raises", _factory_raises),
    Case("factory-not-module", _factory_not_module),
    Case("factory-missing-function", _factory_missing_function),
    Case("timm-unknown-name", _timm_unknown),
    # data
    Case("data-missing", _data_missing),
    Case("eval-data-missing", _eval_data_missing),
    Case("data-empty-folder", _data_empty_folder),
    Case("data-class-without-images", _data_class_without_images),
    Case("data-no-readable-image", _data_no_readable_image),
    Case("npz-without-x", _npz_without_x),
    Case("npz-without-y", _npz_without_y),
    Case("npz-length-mismatch", _npz_length_mismatch),
    Case("npz-x-dtype", _npz_wrong_x_dtype),
    Case("npz-float-labels", _npz_float_labels),
    Case("npz-corrupt", _npz_not_npz),
    Case("samples-zero", _samples_zero),
    Case("samples-too-many", _samples_too_many),
    # numeric flags
    Case("batch-size-zero", _measure_batch_size_zero),
    Case("lanczos-steps-zero", _measure_lanczos_steps_zero),
    Case("tol-negative", _measure_negative_tol),
    Case("reduce-unknown", _measure_bad_reduce),
    Case("loss-bound-negative", _measure_bad_loss_bound),
    Case("flag-not-a-number", _measure_not_an_int),
    Case("measure-cuda-missing", _measure_cuda_missing),
    Case("finetune-radius-negative", _finetune_negative_radius),
    Case("finetune-epochs-zero", _finetune_epochs_zero),
    Case("finetune-noise-rate-one", _finetune_rate_one),
    Case("finetune-matrix-rate", _finetune_matrix_rate),
    Case("finetune-matrix-singular", _finetune_singular_matrix),
    Case("finetune-matrix-invalid", _finetune_invalid_matrix),
    Case("finetune-matrix-missing", _finetune_missing_matrix_file),
    Case("finetune-cuda-missing", _finetune_cuda_missing),
    Case("finetune-pretrained-missing", _finetune_missing_pretrained),
    # outputs
    Case("json-missing-folder", _json_missing_folder),
    Case("json-parent-is-file", _json_parent_is_file),
    Case("json-read-only-folder", _json_read_only, needs_non_root=True),
    Case("json-is-directory", _json_is_directory),
    Case("csv-missing-folder", _csv_missing_folder),
    Case("inspect-json-missing-folder", _inspect_json_missing_folder),
    Case("out-existing-run", _out_existing_run),
    Case("out-is-a-file", _out_is_file),
    Case("resume-no-run", _resume_nothing),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, env: Env, capsys) -> None:
    if case.needs_non_root and IS_ROOT:
        pytest.skip("root ignores file permissions; see the parent-is-file cases")
    if "cuda-missing" in case.id and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    args, needles = case.build(env)
    before = snapshot(env.tmp)
    code, out, err = run_cli(args, capsys)
    after = snapshot(env.tmp)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1, (code, out, err)
    assert "Traceback" not in err, err
    assert len(errors) == 1, err
    line = errors[0]
    assert "internal error" not in line, line
    for needle in needles:
        assert needle in line, (needle, line)
    assert after == before, "an output file was created or changed"
    assert not env.marker.exists(), "code from a checkpoint ran"


def test_debug_shows_the_traceback(env: Env, capsys) -> None:
    code, _, err = run_cli([*_ckpt_missing(env)[0], "--debug"], capsys)
    assert code == 1
    assert "Traceback" in err and "HessauditError" in err
    assert err.rstrip().splitlines()[-1].startswith("error:")


def test_refused_pickle_never_runs_code(env: Env) -> None:
    """Control: the payload really runs under plain pickle, and never under load_checkpoint."""
    from hessaudit.errors import HessauditError
    from hessaudit.inputs.checkpoints import load_checkpoint

    evil = Evil(str(env.marker))
    path = env.torch_file("evil.pt", {"w": torch.zeros(1), "x": evil})
    with pytest.raises(HessauditError):
        load_checkpoint(path)
    assert not env.marker.exists()
    pickle.loads(pickle.dumps(evil))  # the control: it does run code when unpickled
    assert env.marker.read_text() == "pwned"


def test_unreadable_image_is_skipped_with_a_warning(env: Env, capsys) -> None:
    """A broken or non-image file inside an image folder is skipped, and the warning names it
    and says why; the audit goes on with the rest."""
    from tests.files import write_png

    root = env.tmp / "mixed"
    for cls in ("a", "b"):
        for i in range(3):
            write_png(root / cls / f"{i}.png", size=(8, 8), mode="L", value=20 * i + 7)
    (root / "a" / "broken.png").write_bytes(b"\x89PNG but truncated")
    (root / "b" / "notes.txt").write_text("not an image")
    args = ["measure", env.pre, env.ft, "--model", env.spec, "--data", root, "--no-spectrum",
            "--num-classes", "10", "--quiet"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert "Traceback" not in err
    warning = [line for line in err.splitlines() if "skipped 2 file" in line]
    assert warning, err
    assert "broken.png" in warning[0] and "unreadable" in warning[0]
    assert "notes.txt" in warning[0] and "not an image file" in warning[0]


def test_every_case_is_documented() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "errors.md").read_text()
    missing = [case.id for case in CASES if f"`{case.id}`" not in doc]
    assert not missing, f"cases missing from docs/errors.md: {missing}"
