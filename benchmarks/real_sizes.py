"""What ``hessaudit measure`` costs on the sizes users audit (issue 16, targets 3 and 5).

    python benchmarks/real_sizes.py [--device cpu|cuda] [--cases resnet50,vit_base,bert_base]
                                    [--out benchmarks/real_sizes.json]

Each case writes synthetic inputs (random weights, a small perturbation as the fine-tuned
checkpoint, random data: nothing is downloaded), runs the whole ``hessaudit measure`` process
once and records its wall time, peak resident memory, peak GPU memory (CUDA only) and the
per-layer cost (Hessian-vector products and steps from the audit JSON). These are records,
not targets: they tell users what to expect and where a GPU is needed.

Cases (issue 16): timm ``resnet50`` at 224 pixels (``--samples 32`` on CPU, 256 on CUDA),
``vit_base_patch16_224`` (``--samples 8`` on CPU), and a BERT-base-sized classifier (12
layers, hidden 768, random weights) on 16 examples of 128 tokens with the default layer set
and with ``--include`` on one layer (the classifier, or a middle block's query, whose
Hessian-vector products go through half the network: the average layer's cost). The
``*_layer`` cases measure one middle layer where the default set takes CPU-hours.
``--timeout S`` stops a case after S seconds and records that it did not finish.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: Runs the CLI in-process so that the peak GPU memory can be read at exit.
_RUNNER = """
import resource, sys, time, torch
from hessaudit.cli import main
t = time.perf_counter(); code = 0
try:
    main(sys.argv[1:])
except SystemExit as e:
    code = e.code or 0
wall = time.perf_counter() - t
gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print('BENCH', code, wall, rss, gpu, file=sys.stderr)
"""


def _timm_inputs(root: Path, name: str, examples: int, size: int) -> list[str]:
    import numpy as np
    import timm
    import torch
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    pre = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    ft = {k: (v + 0.01 * v.std().nan_to_num() * torch.randn(v.shape, generator=g)
              if v.is_floating_point() and v.numel() > 1 else v.clone()) for k, v in pre.items()}
    save_file(pre, str(root / "pre.safetensors"))
    save_file(ft, str(root / "ft.safetensors"))
    rng = np.random.default_rng(0)
    np.savez(root / "data.npz", x=rng.normal(size=(examples, 3, size, size)).astype("float32"),
             y=rng.integers(0, 10, size=examples))
    return [str(root / "pre.safetensors"), str(root / "ft.safetensors"), "--model", name,
            "--data", str(root / "data.npz")]


def _bert_inputs(root: Path, examples: int, tokens: int) -> list[str]:
    """A BERT-base-sized classifier directory pair and a CSV of ``tokens``-word texts."""
    import numpy as np
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    words = [f"w{i}" for i in range(2000)]
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="[PAD]", unk_token="[UNK]",
                                  cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    config = BertConfig(vocab_size=len(vocab), num_labels=2)  # 12 layers, hidden 768
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    for tag, scale in (("pre", 0.0), ("ft", 0.01)):
        if scale:
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(scale * p.std().nan_to_num() * torch.randn_like(p))
        model.save_pretrained(root / tag)
        tok.save_pretrained(root / tag)
    rng = np.random.default_rng(0)
    lines = ["text,label"] + [" ".join(rng.choice(words, tokens)) + f",{rng.integers(0, 2)}"
                              for _ in range(examples)]
    (root / "data.csv").write_text("\n".join(lines) + "\n")
    return [str(root / "pre"), str(root / "ft"), "--model", str(root / "ft"),
            "--data", str(root / "data.csv"), "--max-length", str(tokens)]


def _run(args: list[str], out_json: Path, device: str, timeout: float | None) -> dict:
    cmd = [sys.executable, "-c", _RUNNER, "measure", *args, "--device", device,
           "--json", str(out_json), "--quiet"]
    t = time.perf_counter()
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ,
                             "PYTHONWARNINGS": "ignore"}, cwd=str(HERE.parent), timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish in {timeout:.0f} s (stopped)", "wall_s": timeout}
    line = [ln for ln in res.stderr.splitlines() if ln.startswith("BENCH")]
    if not line or line[-1].split()[1] != "0":
        return {"error": res.stderr[-1500:], "wall_s": time.perf_counter() - t}
    _, _, wall, rss, gpu = line[-1].split()
    doc = json.loads(out_json.read_text())
    layers = doc["layers"]
    return {"wall_s": float(wall), "peak_rss_mb": float(rss), "peak_gpu_mb": float(gpu),
            "layers": len(layers), "examples": doc["inputs"].get("audit_examples"),
            "engine_paths": sorted({r["engine_path"] for r in layers}),
            "converged": sum(bool(r["converged"]) for r in layers),
            "hvps_per_layer": [r.get("quad_hvps") for r in layers],
            "seconds_per_layer": float(wall) / max(len(layers), 1),
            "bound_kind": doc.get("bound_kind"), "hessian_term": doc.get("hessian_term")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cases", default="resnet50,vit_base,bert_base,bert_base_one_layer")
    parser.add_argument("--out", default=str(HERE / "real_sizes.json"))
    parser.add_argument("--timeout", type=float, default=None, help="seconds per case")
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda")
    tmp = Path(tempfile.mkdtemp(prefix="hessaudit-real-"))
    cases = {
        "resnet50": lambda: (_timm_inputs(tmp / "r50", "resnet50", 256 if cuda else 32, 224),
                             ["--input-size", "224"]),
        "vit_base": lambda: (_timm_inputs(tmp / "vit", "vit_base_patch16_224", 64 if cuda else 8,
                                          224), ["--input-size", "224"]),
        "bert_base": lambda: (_bert_inputs(tmp / "bert", 16, 128), []),
        "bert_base_one_layer": lambda: (_bert_inputs(tmp / "bert1", 16, 128),
                                        ["--include", "classifier.weight"]),
        "bert_base_layer": lambda: (
            _bert_inputs(tmp / "bert2", 16, 128),
            ["--include", "bert.encoder.layer.5.attention.self.query.weight"]),
        "vit_base_layer": lambda: (
            _timm_inputs(tmp / "vit1", "vit_base_patch16_224", 8, 224),
            ["--input-size", "224", "--include", "blocks.5.attn.qkv.weight"]),
    }
    results = {"device": args.device, "threads": os.environ.get("OMP_NUM_THREADS"), "cases": {}}
    for name in args.cases.split(","):
        inputs, extra = cases[name]()
        res = _run(inputs + extra, tmp / f"{name}.json", args.device, args.timeout)
        results["cases"][name] = {"options": extra, **res}
        print(name, json.dumps({k: v for k, v in res.items() if k != "hvps_per_layer"}),
              flush=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
