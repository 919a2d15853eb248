"""Re-audit the checkpoints of a ``run.py`` sweep with another choice of the loss bound C.

``run.py`` leaves every fine-tuned checkpoint in ``OUT/runs/<run>/final.safetensors`` and the
exact training examples in ``OUT/runs/train_<run>.npz``. This script audits each again, with the
same settings as ``run.py --measures`` (traces, noise stability 1e-3, the run's seed) except
``--loss-bound``, and writes the audits, labelled like ``run.py``'s, to ``OUT/audits_<tag>/``.
Only ``hessian_term`` and ``bound`` depend on C; the rest is recomputed to keep every audit
self-contained::

    python examples/measure_vs_gap/reaudit.py --loss-bound quantile:0.99
    hessaudit correlate examples/measure_vs_gap/out/audits \
        examples/measure_vs_gap/out/audits_quantile0.99 --group-by C_source --out ...

Cheaper than retraining (``run.py --loss-bound quantile:0.99`` retrains the same seeded
checkpoints).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODEL = "hessaudit.zoo:digits_cnn"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "out", help="run.py's output folder")
    parser.add_argument("--loss-bound", required=True, help="max | quantile:Q | a number")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    import warnings

    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*")
    from hessaudit.audit.run import AuditRequest, run_audit

    out: Path = args.out
    target = out / f"audits_{args.loss_bound.replace(':', '')}"
    target.mkdir(exist_ok=True)
    start = time.perf_counter()
    sources = sorted((out / "audits").glob("*.json"))
    for i, source in enumerate(sources, 1):
        old = json.loads(source.read_text(encoding="utf-8"))
        name = source.stem
        tags = old["inputs"]["tags"]
        audit = run_audit(
            AuditRequest(
                pretrained=str(out / "pretrained.safetensors"),
                finetuned=str(out / "runs" / name / "final.safetensors"),
                model=MODEL,
                data=str(out / "runs" / f"train_{name}.npz"),
                eval_data="digits",
                spectrum=True,
                noise_stability=1e-3,
                loss_bound=args.loss_bound,
                tags=tuple((k, tags[k]) for k in ("sweep", "value", "seed")),
                seed=int(tags["seed"]),
            )
        ).to_dict()
        (target / source.name).write_text(json.dumps(audit, indent=2) + "\n", encoding="utf-8")
        print(f"[{i}/{len(sources)}] {name}: C {old['C']:.4f} -> {audit['C']:.4f}  "
              f"G {old['hessian_term']:.4f} -> {audit['hessian_term']:.4f}", flush=True)
    print(f"wall time {time.perf_counter() - start:.0f} s; audits in {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
