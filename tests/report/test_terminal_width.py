"""Every table at 80 and 120 columns: no number cut, no layer name broken, no line too wide.

Each command's table is rendered on ``rich.console.Console(width=W, record=True)`` from real
documents (audits of the tiny factory model and of timm's ``test_resnet``, an inspect report,
a compare document, a finetune run's rows, a tune result); the checks read only the text:

* no line is wider than ``W``;
* every layer name is on one line, whole or as ``…`` + a right part of it (cut from the left);
* every number the table shows is one of the document's numbers as :func:`fmt_number` formats
  it, whole (a number cut with an ellipsis or broken across lines fails), and every number of a
  column that is not named in the caption "not shown at this width" is there.

The last test runs ``hessaudit measure`` in a real 80x40 terminal (tmux), when tmux is there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from rich.console import Console

from hessaudit.report import _layout
from hessaudit.report._format import fmt_number as fmt
from hessaudit.report._format import fmt_percent, fmt_signed
from tests.files import TINY_FACTORY_SOURCE, perturbed

WIDTHS = (80, 120)
MARKER = _layout.MARKER
# A number as the reports write them: 1,234 / -0.00156 / 2.7e-05 / +25% ...
NUMBER = re.compile(r"(?<![\w.])[-+]?\d[\d,]*(?:\.\d+)?(?:e[-+]\d+)?%?(?![\w])")


# ------------------------------------------------------------------ documents


def _tiny_pair(folder: Path) -> tuple[str, Path, Path]:
    import importlib.util

    from hessaudit.inputs.checkpoints import save_checkpoint

    source = folder / "tinynet.py"
    source.write_text(TINY_FACTORY_SOURCE)
    spec = importlib.util.spec_from_file_location("_tty_tinynet", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    pre = module.make_tiny(num_classes=5, seed=0).state_dict()
    ft = perturbed(pre, seed=2)
    head = module.make_tiny(num_classes=10, seed=1)
    ft["fc.weight"], ft["fc.bias"] = head.fc.weight.detach(), head.fc.bias.detach()
    save_checkpoint(folder / "pre.safetensors", pre)
    save_checkpoint(folder / "ft.safetensors", ft)
    return f"{source}:make_tiny", folder / "pre.safetensors", folder / "ft.safetensors"


def _audit(**fields: Any) -> dict[str, Any]:
    from hessaudit.audit.run import AuditRequest, audit_to_json, run_audit

    return json.loads(audit_to_json(run_audit(AuditRequest(**fields))))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> SimpleNamespace:
    folder = tmp_path_factory.mktemp("tty_tiny")
    spec, pre, ft = _tiny_pair(folder)
    audit = _audit(pretrained=str(pre), finetuned=str(ft), model=spec, data="digits",
                   eval_data="digits", samples=12, spectrum_samples=4, trace_probes=2)
    return SimpleNamespace(spec=spec, pre=pre, ft=ft, audit=audit)


@pytest.fixture(scope="module")
def timm_audit(timm_resnet_pair, tmp_path_factory) -> dict[str, Any]:
    """test_resnet's longest names (``layer4.0.downsample.1.weight``), no spectrum."""
    import numpy as np

    data = tmp_path_factory.mktemp("tty_timm") / "data.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.standard_normal((4, 3, 16, 16)).astype("float32"),
             y=rng.integers(0, 4, 4))
    pair = timm_resnet_pair
    return _audit(pretrained=str(pair.pretrained), finetuned=str(pair.finetuned),
                  model=pair.spec, data=str(data), spectrum=False,
                  include=("*downsample*", "fc.*", "conv1.0.*"))


# ------------------------------------------------------------------ checks


def render(width: int, draw) -> list[str]:
    with open(os.devnull, "w") as sink:
        console = Console(width=width, record=True, highlight=False, emoji=False, file=sink)
        draw(console)
    return console.export_text(styles=False).splitlines()


def check_lines(lines: list[str], width: int) -> None:
    too_wide = [line for line in lines if len(line) > width]
    assert not too_wide, f"lines wider than {width}: {too_wide}"


def check_names(lines: list[str], names: list[str]) -> list[str]:
    """Each name whole on one line, or ``…`` + a right part of it, never broken; ``lines``
    with the names blanked out (for :func:`check_numbers`)."""
    out = list(lines)
    for name in names:
        whole = re.compile(rf"(?<![\w.]){re.escape(name)}(?![\w.])")
        short = [m for line in out for m in re.finditer(rf"{MARKER}[\w.]+", line)
                 if name.endswith(m.group()[1:])]
        for m in short:  # a shortened name still tells its layer apart
            assert [n for n in names if n.endswith(m.group()[1:])] == [name], m.group()
        hits = [i for i, line in enumerate(out) if whole.search(line)]
        assert hits or short, f"layer name {name!r} is not on one line, whole or shortened"
        out = [whole.sub(" ", line) for line in out]
        for m in short:
            out = [line.replace(m.group(), " ") for line in out]
    return out


def check_numbers(lines: list[str], expected: dict[str, list[str]], caption: str = "") -> None:
    """Every number token in ``lines`` is a whole expected number (no cut, no piece); every
    number of a column (``expected[header]``) is there unless the caption names the column."""
    allowed = {n.lstrip("+") for numbers in expected.values() for n in numbers}
    text = "\n".join(lines)
    assert not re.search(rf"\d{MARKER}|{MARKER}\d", text), "a number is cut with an ellipsis"
    tokens = [t.lstrip("+") for line in lines for t in NUMBER.findall(line)]
    stray = [t for t in tokens if t not in allowed]
    assert not stray, f"numbers that are not whole values of the document: {stray}"
    left_out = caption.split("not shown at this width:", 1)[1] if "not shown" in caption else ""
    for header, numbers in expected.items():
        if header and header in left_out:
            continue
        for number in numbers:
            assert re.search(rf"(?<![\w.]){re.escape(number)}(?![\w])", text), (
                f"{header}: {number} missing"
            )


def table_lines(lines: list[str]) -> tuple[list[str], str]:
    """The rows of the first box-drawn table in ``lines`` and its caption (the lines after)."""
    start = next(i for i, line in enumerate(lines) if line.startswith(("┏", "┌")))
    end = next(i for i, line in enumerate(lines) if i > start and line.startswith(("└", "┗")))
    rows = [line for line in lines[start:end] if line.startswith("│")]
    after = lines[end + 1 :]
    stop = next((i for i, line in enumerate(after) if not line.strip() or line[0] in "╭┏┌"),
                len(after))
    return rows, " ".join(after[:stop])


# ------------------------------------------------------------------ measure


def audit_numbers(document: dict[str, Any]) -> dict[str, list[str]]:
    from hessaudit.report.audit import layer_shares

    layers = document["layers"]
    return {
        "params": [f"{la['numel']:,}" for la in layers],
        "‖v‖": [fmt(la["dist_fro"]) for la in layers],
        "vᵀHv": [fmt(la["quad_raw"]) for la in layers],
        "vᵀH⁺v": [fmt(la["quad_pos"]) for la in layers],
        "": [fmt(la["hcal"]) for la in layers]
        + [f"{100 * s:.1f}%" for s in layer_shares(document)],
        "top eig": [fmt(la["top_eig"]) for la in layers if la["top_eig"] is not None],
        "trace ± se": [n for la in layers if la["trace"] is not None
                       for n in (fmt(la["trace"], 3), fmt(la["trace_stderr"], 2))],
    }


def check_audit(document: dict[str, Any], width: int) -> list[str]:
    from hessaudit.report.audit import print_audit

    lines = render(width, lambda c: print_audit(document, c))
    check_lines(lines, width)
    rows, caption = table_lines(lines)
    panel = [line for line in lines if line.startswith("│") and line not in rows]
    rows = check_names(rows, [la["name"] for la in document["layers"]])
    check_numbers(rows, audit_numbers(document), caption)
    for key in ("train_loss", "C", "hessian_term", "bound", "eval_loss", "gap", "ratio_to_gap"):
        if isinstance(document[key], float):
            assert any(re.search(rf"(?<![\w.]){re.escape(fmt(document[key]))}(?![\w])", line)
                       for line in panel), key
    return lines


@pytest.mark.parametrize("width", WIDTHS)
def test_measure_tiny_model(tiny, width) -> None:
    lines = check_audit(tiny.audit, width)
    text = "\n".join(lines)
    # JVP path: the three form columns read the same and are one column, labelled so.
    assert all(la["engine_path"] == "jvp" for la in tiny.audit["layers"])
    assert "vᵀHv =" in text and "vᵀH⁺v =" in text
    if width == 120:
        assert "not shown" not in text  # everything fits at 120


@pytest.mark.parametrize("width", WIDTHS)
def test_measure_timm_resnet(timm_audit, width) -> None:
    lines = check_audit(timm_audit, width)
    text = "\n".join(lines)
    assert "top eig" not in text and "trace" not in text  # --no-spectrum: no empty columns
    assert "layer4.0.downsample.1.weight" in text  # 28 characters: never shortened


@pytest.mark.parametrize("width", WIDTHS)
def test_measure_long_names_shorten_from_the_left(tiny, width) -> None:
    document = json.loads(json.dumps(tiny.audit))
    long = "encoder.layers.encoder_layer_11.mlp.linear_1.weight.of.a.very.deep.model"
    document["layers"][0]["name"] = long
    document["layers"].append({**document["layers"][0], "name": "x" * 90})  # no dot to cut at
    lines = check_audit(document, width)
    assert long not in "\n".join(lines) and MARKER in "\n".join(lines)


def test_clamped_and_not_converged_notes_stay_readable(tiny) -> None:
    document = json.loads(json.dumps(tiny.audit))
    document["layers"][0].update(clamped=True, converged=False, engine_path="lanczos")
    for width in (60, *WIDTHS):
        lines = check_audit(document, width)
        text = "\n".join(lines)
        assert "(clamped)" in text and "(not converged)" in text and "lanczos" in text


def test_piped_stdout_is_as_wide_as_the_table(tiny, monkeypatch, capsys) -> None:
    """Not a terminal (a CI log): every column, every name whole, however long."""
    from hessaudit.report import console as _console
    from hessaudit.report.audit import print_audit

    document = json.loads(json.dumps(tiny.audit))
    long = "encoder." * 30 + "weight"
    document["layers"][0]["name"] = long
    _console.stdout.cache_clear()
    try:
        print_audit(document)
    finally:
        _console.stdout.cache_clear()
    out = capsys.readouterr().out
    assert long in out and "not shown" not in out and "top eig" in out


# ------------------------------------------------------------------ inspect


@pytest.mark.parametrize("width", WIDTHS)
def test_inspect(tiny, width) -> None:
    from hessaudit.audit.distances import compare_weights
    from hessaudit.report.inspect import print_distances

    document = compare_weights(str(tiny.pre), str(tiny.ft), model=tiny.spec).to_dict()
    document["layers"][0]["name"] = "backbone.stages.3.blocks.11.mlp.fc2.weight.extra.long"
    lines = render(width, lambda c: print_distances(document, c))
    check_lines(lines, width)
    rows, caption = table_lines(lines)
    layers = document["layers"]
    rows = check_names(rows, [la["name"] for la in layers])
    check_numbers(rows, {
        "params": [f"{la['numel']:,}" for la in layers],
        "": [fmt(la["dist_fro"]) for la in layers] + [fmt(la["rel_dist"]) for la in layers],
        "shape": [str(d) for la in layers for d in la["shape"]],
    }, caption)


# ------------------------------------------------------------------ compare


@pytest.mark.parametrize("width", WIDTHS)
def test_compare(tiny, width) -> None:
    from hessaudit.audit.compare import compare_audits
    from hessaudit.report.compare import print_compare

    new = json.loads(json.dumps(tiny.audit))
    for i, layer in enumerate(new["layers"]):
        layer["hcal"] *= 1.0 + 0.37 * (i + 1)
    new["bound"] *= 1.25
    document = compare_audits(tiny.audit, new, [], base_path="base.json", new_path="new.json")
    lines = render(width, lambda c: print_compare(document, c))
    check_lines(lines, width)
    start = next(i for i, line in enumerate(lines) if line.startswith("Hcal per layer"))
    summary_rows, _ = table_lines(lines[:start])
    rows, caption = table_lines(lines[start:])
    rows = check_names(rows, [la["name"] for la in document["layers"]])
    layers = document["layers"]
    check_numbers(rows, {
        "base Hcal": [fmt(la["base"]) for la in layers],
        "": [fmt(la["new"]) for la in layers] + [fmt_percent(la["rel_change_pct"])
                                                 for la in layers],
        "change": [fmt_signed(la["abs_change"]) for la in layers],
        "share base → new": [f"{100 * la[k]:.1f}%" for la in layers
                             for k in ("base_share", "new_share")],
    }, caption)
    summary = [e for e in document["summary"].values() if e is not None]
    check_numbers(summary_rows, {"": [
        text for e in summary for text in
        (fmt(e["base"]), fmt(e["new"]), fmt_signed(e["abs_change"]),
         fmt_percent(e["rel_change_pct"]))
        if text != "-"
    ]})


# ------------------------------------------------------------------ correlate


@pytest.mark.parametrize("width", WIDTHS)
def test_correlate(tmp_path, width) -> None:
    from hessaudit.correlate import core as lib
    from hessaudit.report.correlate import print_correlate
    from tests.documents import crafted_sweep

    paths = crafted_sweep(tmp_path / "audits")
    points, skipped = lib.load_points([], paths)
    document = lib.correlate_audits(points, skipped=skipped, group_by="axis", bootstrap=50,
                                    seed=0)
    lines = render(width, lambda c: print_correlate(document, c))
    check_lines(lines, width)
    rows, caption = table_lines(lines)

    def r(value: float | None) -> list[str]:
        return [] if value is None else [f"{value:+.2f}"]

    check_numbers(rows, {"": [
        text for row in document["correlations"] for text in (
            [str(row["n"]), fmt(row["median_ratio"]), str(row["ratio_n"])]
            + [t for key in ("spearman", "pearson") for end in ("", "_lo", "_hi")
               for t in r(row[key + end])]
        )
    ]}, caption)


# ------------------------------------------------------------------ finetune


def _finetune_rows() -> list[dict[str, Any]]:
    return [
        {"epoch": e, "train_loss": 2.0 / e + 0.0123456, "train_acc": 0.31 + 0.1 * e,
         "val_acc": 0.2871 + 0.05 * e, "val_loss": 1.5 / e, "heldout_acc": 0.25 + 0.06 * e,
         "heldout_loss": 1.7 / e, "max_radius_ratio": 0.3333333 * e, "seconds": 12.3456 * e}
        for e in (1, 2, 3)
    ]


def _finetune_result(out: Path) -> Any:
    from hessaudit.robust.config import FinetuneConfig
    from hessaudit.robust.trainer import FinetuneResult

    config = FinetuneConfig(model="m.py:f", pretrained="p.safetensors", data="digits",
                            out=str(out))
    rows = _finetune_rows()
    rows[-1].update(max_distance=0.87654321, max_distance_layer="layer4.0.downsample.1.weight",
                    train_acc_clean=0.812345)
    return FinetuneResult(
        config=config, out=out, files={}, metrics=rows, num_classes=10, epochs_run=3,
        best_epoch=2, best_val_acc=0.3871, stopped_early=False, resumed_from=None,
        new_tensors=["fc.weight", "fc.bias"], unused_pretrained=[], noise_matrix=None,
        noise_matrix_source=None, noise=None,
        audit={"hessian_term": 0.123456789, "bound": 1.98765432},
    )


@pytest.mark.parametrize("width", WIDTHS)
def test_finetune_display(width) -> None:
    from hessaudit.report.training import RichTrainingDisplay, epoch_line, summary_rows

    rows = _finetune_rows()
    result = _finetune_result(Path("runs") / "finetune-run")

    def draw(console: Console) -> None:
        display = RichTrainingDisplay(console=console, out=console)
        display.start_phase("fine-tune", epochs=30, first_epoch=1, steps=100)
        for row in rows:
            display.start_epoch(row["epoch"])
            display.step(50, loss=row["train_loss"], acc=row["train_acc"])
            display.end_epoch(row)
        console.print(display._progress.get_renderable())  # the live bars, as last drawn
        display.finish(result)

    lines = render(width, draw)
    check_lines(lines, width)
    text = "\n".join(lines)
    # every word of every epoch line and of the summary, unbroken
    words = {w for row in rows for w in epoch_line(row, total=30).split()}
    words |= {w for key, value in summary_rows(result) for w in f"{key} {value}".split()}
    words |= {f"{rows[-1][key]:.4f}" for key in ("train_loss", "train_acc")}  # live bars
    tokens = {t for line in lines for t in line.replace("│", " ").split()}
    missing = [w for w in words if w not in tokens]
    assert not missing, f"broken or missing: {missing}"
    assert "layer4.0.downsample.1.weight" in text


# ------------------------------------------------------------------ tune


def _tune_result(out: Path) -> Any:
    from hessaudit.robust.config import FinetuneConfig
    from hessaudit.robust.tune.results import TrialRecord, TuneResult
    from hessaudit.robust.tune.settings import TuneSettings
    from hessaudit.robust.tune.space import build_space

    base = FinetuneConfig(model="m.py:f", pretrained="p.safetensors", data="digits",
                          out=str(out), epochs=6, noise_matrix="symmetric:0.2")
    settings = TuneSettings(base=base, space=build_space(base), trials=6)
    trials = [
        TrialRecord(
            number=i, state="complete", score=0.5 + 0.0371 * i,
            params={name: spec.low * (1.7 + 0.123 * i) for name, spec in settings.space.items()},
            metrics={"val_acc": 0.5 + 0.0371 * i, "epochs_run": 2}, seconds=10.5 + i,
        )
        for i in range(6)
    ]
    return TuneResult(settings=settings, out=out, trials=trials, best=trials[-1],
                      best_config=None, seconds=70.0,
                      document={"direction": "maximize", "trials": {"complete": 6},
                                "command": "hessaudit tune ..."})


@pytest.mark.parametrize("width", WIDTHS)
def test_tune_table(tmp_path, width) -> None:
    from hessaudit.report._format import fmt_metric as _fmt
    from hessaudit.report.tuning import RichTuneDisplay

    result = _tune_result(tmp_path / "search")
    lines = render(width, lambda c: RichTuneDisplay(console=c, out=c).finish(result))
    check_lines(lines, width)
    rows, caption = table_lines(lines)
    best = sorted(result.trials, key=lambda r: -r.score)[:5]
    expected = {"": [str(r.number) for r in best] + [_fmt(r.score) for r in best],
                "seconds": [_fmt(r.seconds) for r in best],
                "epochs": [_fmt(r.metrics["epochs_run"]) for r in best]}
    for name in result.settings.space:
        expected[name] = [_fmt(r.params[name]) for r in best]
    check_numbers(rows, expected, caption)
    header = " ".join(lines[: lines.index(next(x for x in lines if x.startswith("┡")))])
    assert "score" in header  # score and the (identical) accuracy: one column


# ------------------------------------------------------------------ the layout itself


def test_plan_drops_by_rank_and_names_shrink_last() -> None:
    specs = [
        _layout.Spec("name", 40, 4, 4, (_layout.Step(30, "shrink", 28),
                                        _layout.Step(_layout.LAST, "shrink", 12))),
        _layout.Spec("a", 10, 1, 1, (_layout.Step(10, "drop"),)),
        _layout.Spec("b", 10, 1, 1, (_layout.Step(50, "drop"),)),
        _layout.Spec("c", 10, 1, 1),
    ]
    wide = _layout.plan(specs, 200)
    assert wide.widths == {"name": 40, "a": 10, "b": 10, "c": 10} and not wide.dropped
    assert _layout.plan(specs, None).widths == wide.widths
    mid = _layout.plan(specs, 65)  # a goes, then the name shrinks, b stays
    assert mid.dropped == ("a",) and mid.widths["name"] == 65 - 20 - 10 and mid.total == 65
    narrow = _layout.plan(specs, 40)
    assert narrow.dropped == ("a", "b") and narrow.widths["name"] == 40 - 10 - 7


def test_shorten_left() -> None:
    assert _layout.shorten_left("fc.weight", 20) == "fc.weight"
    short = _layout.shorten_left("layer4.1.downsample.0.weight", 20)
    assert short == MARKER + "1.downsample.0.weight"[-19:] and len(short) == 20
    assert _layout.shorten_left("x" * 30, 12) == MARKER + "x" * 11
    names = [f"layer{i}.0.downsample.1.weight" for i in (2, 3, 4)] + ["fc.weight"]
    width = _layout.distinct_width(names, 12)
    assert len({_layout.shorten_left(n, width) for n in names}) == 4
    assert len({_layout.shorten_left(n, width - 1) for n in names}) < 4


# ------------------------------------------------------------------ a real terminal


def in_tmux(command: str, folder: Path, width: int = 80, height: int = 40) -> list[str]:
    """The screen (and scrollback) of ``command`` run in a ``width`` x ``height`` tmux pane;
    terminal-wrapped lines are joined back (``-J``), so a line too wide shows as one."""
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    done = folder / "tmux-done"
    socket = f"hessaudit-tty-{os.getpid()}-{width}"
    tmux = ["tmux", "-L", socket, "-f", "/dev/null"]
    repo = Path(__file__).resolve().parents[2]
    script = (f"cd {repo} && OMP_NUM_THREADS=1 PYTHONPATH={repo} {command}; touch {done}; "
              "sleep 60")
    subprocess.run([*tmux, "new-session", "-d", "-x", str(width), "-y", str(height),
                    "sh", "-c", script], check=True, env={**os.environ, "TERM": "xterm"})
    try:
        deadline = time.monotonic() + 120
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        screen = subprocess.run([*tmux, "capture-pane", "-p", "-J", "-S", "-500"],
                                check=True, capture_output=True, text=True).stdout
    finally:
        subprocess.run([*tmux, "kill-server"], check=False)
    assert done.exists(), screen
    return screen.splitlines()


def test_compare_in_an_80_column_tmux(tiny, tmp_path) -> None:
    """The real CLI in a real terminal: rich reads the width from the tty (no torch: fast)."""
    base, new = tmp_path / "base.json", tmp_path / "new.json"
    document = json.loads(json.dumps(tiny.audit))
    document["layers"][0]["name"] = "backbone.stages.3.blocks.11.mlp.fc2.weight.extra.long"
    base.write_text(json.dumps(document))
    for layer in document["layers"]:
        layer["hcal"] *= 1.5
    new.write_text(json.dumps(document))
    lines = in_tmux(f"{sys.executable} -m hessaudit compare {base} {new} --json "
                    f"{tmp_path / 'c.json'} 2>{tmp_path / 'err'}", tmp_path)
    check_lines(lines, 80)
    compared = json.loads((tmp_path / "c.json").read_text())
    start = next(i for i, line in enumerate(lines) if line.startswith("Hcal per layer"))
    rows, caption = table_lines(lines[start:])
    layers = compared["layers"]
    rows = check_names(rows, [la["name"] for la in layers])
    check_numbers(rows, {
        "base Hcal": [fmt(la["base"]) for la in layers],
        "": [fmt(la["new"]) for la in layers] + [fmt_percent(la["rel_change_pct"])
                                                 for la in layers],
        "change": [fmt_signed(la["abs_change"]) for la in layers],
        "share base → new": [f"{100 * la[k]:.1f}%" for la in layers
                             for k in ("base_share", "new_share")],
    }, caption)


@pytest.mark.slow  # a fresh process audits a model: ~15 s on a busy 2-core machine
def test_measure_in_an_80_column_tmux(tiny, tmp_path) -> None:
    audit = tmp_path / "audit.json"
    lines = in_tmux(
        f"{sys.executable} -m hessaudit measure {tiny.pre} {tiny.ft} --model {tiny.spec} "
        "--data digits --eval-data digits --samples 12 --spectrum-samples 4 "
        f"--trace-probes 2 --json {audit} 2>{tmp_path / 'err'}", tmp_path)
    check_lines(lines, 80)
    rows, caption = table_lines(lines)
    document = json.loads(audit.read_text())
    rows = check_names(rows, [la["name"] for la in document["layers"]])
    check_numbers(rows, audit_numbers(document), caption)


def test_every_width_from_60_to_160(tiny, timm_audit) -> None:
    """The same checks at widths between the two above (and the odd ones in between)."""
    from hessaudit.report.audit import print_audit

    long = json.loads(json.dumps(tiny.audit))
    long["layers"][0].update(name="encoder.layer.0.attention.output.dense.weight", clamped=True,
                             converged=False, engine_path="lanczos")
    long["layers"].append({**long["layers"][0], "name": "encoder.layer.1.attention.output."
                           "dense.weight", "clamped": False, "converged": True})
    for width in range(60, 161, 7):
        for document in (tiny.audit, timm_audit, long):
            if document is not long or width >= 77:  # the names tell apart from 32 cells on
                check_audit(document, width)
    # Narrower: the table is as wide as it must be (the terminal wraps it), the names are
    # never shortened until two of them read alike.
    lines = render(60, lambda c: print_audit(long, c))
    check_names(table_lines(lines)[0], [la["name"] for la in long["layers"]])
