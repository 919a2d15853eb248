"""A real architecture end to end: timm ``resnet18`` at 32x32 on the digits images.

No download: the model is built by timm without pretrained weights, "pretrained" here on the
5-class ``digits-pretrain`` task (8x8 digits upsampled to 32x32, grayscale repeated to 3
channels, ImageNet mean/std: what ``--input-size 32`` does), then fine-tuned on the 10-class
``digits`` task with ``hessaudit finetune``'s library entry point and audited on a few layers
(``--include``) with ``hessaudit measure``'s. Reports the wall time of each phase and the peak
resident memory of the process (``resource.getrusage(RUSAGE_SELF).ru_maxrss``).

    python examples/timm_resnet/run.py            # full: all 1201 images, 2 + 2 epochs
    python examples/timm_resnet/run.py --quick    # seconds: 64 images, 1 + 1 epoch, fc only

The equivalent CLI calls for the fine-tune and the audit are printed at the end.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODEL = "resnet18"
INPUT_SIZE = 32
FULL = {
    "samples": None,
    "pretrain_epochs": 2,
    "finetune_epochs": 2,
    "include": ("conv1.weight", "layer1.0.conv1.weight", "layer4.1.conv2.weight", "fc.weight"),
    "audit_samples": 128,
}
QUICK = {
    "samples": 64,
    "pretrain_epochs": 1,
    "finetune_epochs": 1,
    "include": ("layer4.1.conv2.weight", "fc.weight"),
    "audit_samples": 16,
}
LR = 1e-3
BATCH = 32


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
    parser.add_argument("--out", type=Path, default=HERE / "out", help="output folder")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    return parser.parse_args(argv)


def peak_rss_mib() -> float:
    """Peak resident set size of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def pretrain(path: Path, settings: dict) -> float:
    import torch

    from hessaudit.inputs.checkpoints import save_checkpoint
    from hessaudit.inputs.data import load_data
    from hessaudit.inputs.models import build_model, input_config

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(MODEL, num_classes=5)
    cfg = input_config(model, input_size=INPUT_SIZE)
    train = load_data("digits-pretrain", role="train", input_config=cfg,
                      samples=settings["samples"], seed=0)
    held = load_data("digits-pretrain", role="eval", input_config=cfg,
                     samples=settings["samples"], seed=0)
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    for _ in range(settings["pretrain_epochs"]):
        model.train()
        perm = torch.randperm(len(train), generator=generator)
        for start in range(0, len(train), BATCH):
            idx = perm[start : start + BATCH]
            if idx.numel() < 2:
                continue
            loss = torch.nn.functional.cross_entropy(model(train.x[idx]), train.y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(held.x[i : i + 128]).argmax(1) == held.y[i : i + 128]).sum())
                      for i in range(0, len(held), 128))
    save_checkpoint(path, model.state_dict(), metadata={"task": "digits-pretrain"})
    return correct / len(held)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import warnings

    import numpy as np
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*")
    from hessaudit.audit.run import AuditRequest, run_audit, write_audit_json
    from hessaudit.inputs.data import load_data
    from hessaudit.robust.config import FinetuneConfig
    from hessaudit.robust.trainer import run_finetune

    settings = QUICK if args.quick else FULL
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    start = time.perf_counter()

    t0 = time.perf_counter()
    pretrained = out / "pretrained.safetensors"
    pre_acc = pretrain(pretrained, settings)
    times["pretrain"] = time.perf_counter() - t0
    print(f"pretrained resnet18 on digits-pretrain: held-out acc {pre_acc:.3f} "
          f"({times['pretrain']:.0f} s)", flush=True)

    # Quick mode: a seeded subset of the training and held-out parts, as .npz files (the
    # audit's training data must be what the model was trained on; clean labels).
    data, eval_data = "digits", "digits"
    if settings["samples"] is not None:
        subset = load_data("digits", role="train", samples=settings["samples"], seed=0)
        data = str(out / "train_subset.npz")
        np.savez(data, x=subset.x.numpy(), y=subset.y.numpy())
        held = load_data("digits", role="eval", samples=settings["samples"], seed=0)
        eval_data = str(out / "heldout_subset.npz")
        np.savez(eval_data, x=held.x.numpy(), y=held.y.numpy())

    t0 = time.perf_counter()
    run_dir = out / "finetune"
    shutil.rmtree(run_dir, ignore_errors=True)
    config = FinetuneConfig(
        model=MODEL, pretrained=str(pretrained), data=data, eval_data=eval_data,
        out=str(run_dir), input_size=INPUT_SIZE, num_classes=10, loss="ce",
        lr=LR, schedule="none", epochs=settings["finetune_epochs"], batch_size=BATCH, seed=0,
    )
    result = run_finetune(config)
    times["finetune"] = time.perf_counter() - t0
    print(f"fine-tuned on digits: held-out acc {result.final['heldout_acc']:.3f} "
          f"({times['finetune']:.0f} s)", flush=True)

    t0 = time.perf_counter()
    audit = run_audit(AuditRequest(
        pretrained=str(pretrained), finetuned=str(run_dir / "final.safetensors"), model=MODEL,
        data=data, eval_data=eval_data, input_size=INPUT_SIZE, samples=settings["audit_samples"],
        include=settings["include"], spectrum=False,
    ))
    times["audit"] = time.perf_counter() - t0
    write_audit_json(str(out / "audit.json"), audit)
    document = audit.to_dict()
    wall = time.perf_counter() - start
    peak = peak_rss_mib()

    lines = ["| layer | params | ‖v‖ | Hcal | path |", "|---|---:|---:|---:|---|"]
    for layer in document["layers"]:
        head = " (new head)" if layer["is_new_head"] else ""
        lines.append(f"| {layer['name']}{head} | {layer['numel']:,} | {layer['dist_fro']:.3f} | "
                     f"{layer['hcal']:.4g} | {layer['engine_path']} |")
    ratio = document["ratio_to_gap"]
    lines += [
        "",
        f"train loss {document['train_loss']:.4f}, held-out loss {document['eval_loss']:.4f}, "
        f"gap {document['gap']:.4f}, G (these {len(document['layers'])} layers only) "
        f"{document['hessian_term']:.4f}, G / gap "
        f"{'n/a' if ratio is None else f'{ratio:.2f}'}; n = {document['n']}, "
        f"{document['inputs']['audit_examples']} audit examples.",
        "",
        "| phase | wall time (s) |", "|---|---:|",
        *[f"| {k} | {v:.1f} |" for k, v in times.items()],
        f"| total | {wall:.1f} |",
        "",
        f"Peak resident memory (ru_maxrss): {peak:.0f} MiB. torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s).",
    ]
    text = "\n".join(lines) + "\n"
    include = " ".join(f"--include {name}" for name in settings["include"])
    commands = (
        f"hessaudit finetune --model {MODEL} --pretrained {pretrained} --data {data} "
        f"--eval-data {eval_data} --num-classes 10 --input-size {INPUT_SIZE} --loss ce --lr {LR} "
        f"--schedule none --epochs {settings['finetune_epochs']} --out {run_dir}\n"
        f"hessaudit measure {pretrained} {run_dir / 'final.safetensors'} --model {MODEL} "
        f"--data {data} --eval-data {eval_data} --input-size {INPUT_SIZE} "
        f"--samples {settings['audit_samples']} {include} --no-spectrum"
    )
    meta = {
        "command": "python examples/timm_resnet/run.py" + (" --quick" if args.quick else ""),
        "wall_seconds": round(wall, 1), "phase_seconds": {k: round(v, 1) for k, v in times.items()},
        "peak_rss_mib": round(peak), "torch": torch.__version__,
        "python": platform.python_version(), "threads": torch.get_num_threads(),
        "pretrained_heldout_acc": pre_acc, "finetuned_heldout_acc": result.final["heldout_acc"],
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()},
        "lr": LR, "batch_size": BATCH, "cli_equivalent": commands.splitlines(),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    (out / "summary.md").write_text(text, encoding="utf-8")
    print(text)
    print("CLI equivalent:\n" + commands)
    return 0


if __name__ == "__main__":
    sys.exit(main())
