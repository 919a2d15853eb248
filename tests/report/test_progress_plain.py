"""Issue 12 §11: progress lines when stderr is not a terminal (CI logs), and §10(d): the
out-of-memory message names the memory-driving options and how far the audit got.

The CLI runs in-process under capsys, whose stderr is not a terminal, exactly as in a CI job.
Lines are at most one per INTERVAL_S = 10 s; tests that want one per step set it to 0.
"""

from __future__ import annotations

import re

import pytest

import hessaudit.report.plain_progress as plain
from hessaudit.cli import main
from hessaudit.report.plain_progress import PlainProgress, StepTracker, duration, printable

LINE = re.compile(
    r"^progress: auditing layers (\d+)/(\d+) \((\S+)\) [\d.]+ s elapsed(, ~[\d.]+ s left)?$"
)


def run_cli(args: list[object], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return int(exc.value.code), captured.out, captured.err


def _measure(pair, tmp_path, *extra: object) -> list[object]:
    return [
        "measure", pair.pretrained, pair.finetuned, "--model", pair.spec, "--data", "digits",
        "--samples", "8", "--json", tmp_path / "audit.json", *extra,
    ]


def test_measure_prints_progress_lines_in_a_log(
    tiny_checkpoints, tmp_path, monkeypatch, capsys
) -> None:
    monkeypatch.setattr(plain, "INTERVAL_S", 0.0)  # as if each layer took 10 s
    code, _, err = run_cli(_measure(tiny_checkpoints, tmp_path, "--no-spectrum"), capsys)
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.startswith("progress:")]
    assert [LINE.match(line).group(1, 2, 3) for line in lines] == [  # type: ignore[union-attr]
        ("1", "2", "conv1.weight"),
        ("2", "2", "fc.weight"),
    ]
    assert ", ~" in lines[0] and "left" not in lines[1]


def test_quiet_silences_progress(tiny_checkpoints, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(plain, "INTERVAL_S", 0.0)
    code, _, err = run_cli(_measure(tiny_checkpoints, tmp_path, "--no-spectrum", "-q"), capsys)
    assert code == 0, err
    assert "progress:" not in err


def test_a_short_audit_prints_no_progress(tiny_checkpoints, tmp_path, capsys) -> None:
    code, _, err = run_cli(_measure(tiny_checkpoints, tmp_path, "--no-spectrum"), capsys)
    assert code == 0, err
    assert "progress:" not in err  # done within INTERVAL_S = 10 s


def test_json_on_stdout_keeps_progress_on_stderr(
    tiny_checkpoints, tmp_path, monkeypatch, capsys
) -> None:
    monkeypatch.setattr(plain, "INTERVAL_S", 0.0)
    args = _measure(tiny_checkpoints, tmp_path, "--no-spectrum")
    args[args.index("--json") + 1] = "-"
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert out.lstrip().startswith("{") and "progress:" not in out
    assert "progress: auditing layers 2/2" in err


def test_rate_limit_every_interval_and_a_closing_line() -> None:
    now = [0.0]
    lines: list[str] = []

    class Sink:
        def write(self, text: str) -> None:
            lines.append(text)

        def flush(self) -> None:
            pass

    progress = PlainProgress("auditing layers", stream=Sink(), clock=lambda: now[0])  # type: ignore[arg-type]
    for step in range(1, 37):  # one step per second, 36 steps
        now[0] = float(step)
        progress.update(step, 36, f"l{step}")
    shown = [int(line.split()[3].split("/")[0]) for line in lines]
    assert shown == [10, 20, 30, 36]
    assert lines[1] == "progress: auditing layers 20/36 (l20) 20.0 s elapsed, ~16.0 s left\n"
    assert lines[3] == "progress: auditing layers 36/36 (l36) 36.0 s elapsed\n"


def test_labels_are_escaped_to_one_line() -> None:
    assert printable("a\x1b[31mred\nb") == "a\\u001b[31mred\\nb"
    assert printable("x" * 300).endswith("...") and len(printable("x" * 300)) == 120
    assert duration(75) == "1 min 15 s" and duration(7380) == "2 h 03 min"


def test_control_characters_in_layer_names_through_the_cli(tmp_path, monkeypatch, capsys):
    """A model whose module name holds an escape sequence and a newline."""
    import torch

    monkeypatch.setattr(plain, "INTERVAL_S", 0.0)

    from hessaudit.inputs.checkpoints import save_checkpoint

    (tmp_path / "evil.py").write_text(
        "import torch\n"
        "def make(num_classes=10):\n"
        "    m = torch.nn.Sequential()\n"
        "    m.add_module('flat', torch.nn.Flatten())\n"
        "    m.add_module('h\\x1b[2J\\nead', torch.nn.Linear(64, num_classes))\n"
        "    return m\n"
    )
    torch.manual_seed(0)
    pre = {"h\x1b[2J\nead.weight": torch.randn(10, 64), "h\x1b[2J\nead.bias": torch.zeros(10)}
    ft = {k: v + 0.01 for k, v in pre.items()}
    save_checkpoint(tmp_path / "pre.safetensors", pre)
    save_checkpoint(tmp_path / "ft.safetensors", ft)
    code, _, err = run_cli(
        ["measure", tmp_path / "pre.safetensors", tmp_path / "ft.safetensors",
         "--model", f"{tmp_path / 'evil.py'}:make", "--data", "digits", "--samples", "8",
         "--no-spectrum", "--json", tmp_path / "a.json"],
        capsys,
    )
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.startswith("progress:")]
    assert lines and all("\x1b" not in line for line in lines)
    assert any("h\\u001b[2J\\nead.weight" in line for line in lines), lines


def test_out_of_memory_names_the_options_and_the_phase(
    tiny_checkpoints, tmp_path, monkeypatch, capsys
) -> None:
    import hessaudit.audit.measure

    real = hessaudit.audit.measure._spectrum
    calls = []

    def spectrum(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to "
                               "allocate 400000000000 bytes. Error code 12")
        return real(*args, **kwargs)

    monkeypatch.setattr(hessaudit.audit.measure, "_spectrum", spectrum)
    code, _, err = run_cli(
        _measure(tiny_checkpoints, tmp_path, "--trace-probes", "5000", "--input-size", "12"),
        capsys,
    )
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith(
        "error: out of memory while auditing layers (1 of 2 done; last: conv1.weight); "
        "memory grows with "
    ), last
    assert "--input-size 12, --samples 8, --trace-probes 5000 (set here)" in last
    assert "--batch-size 32" in last and "(defaults)" in last
    assert "Traceback" not in err
    assert not (tmp_path / "audit.json").exists()


def test_tracker_phase_before_the_first_step() -> None:
    tracker = StepTracker("auditing layers")
    assert tracker.phase() == "auditing layers (none done yet)"
    tracker.update(3, 21, "conv\n1")
    assert tracker.phase() == "auditing layers (3 of 21 done; last: conv\\n1)"


def test_finetune_step_lines_in_a_log(digits_pretrained, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(plain, "INTERVAL_S", 0.0)  # every step is due
    code, _, err = run_cli(
        ["finetune", "--model", "hessaudit.zoo:digits_cnn", "--pretrained", digits_pretrained,
         "--data", "digits", "--samples", "64", "--batch-size", "16", "--epochs", "1",
         "--loss", "ce", "--out", tmp_path / "run"],
        capsys,
    )
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.startswith("progress: epoch 1/1 steps")]
    assert lines, err
    assert re.match(r"progress: epoch 1/1 steps \d+/\d+ \(loss [\d.]+ acc [\d.]+\) ", lines[0])
