"""Compare two output trees of tools/identity_run.sh: audit JSON (minus volatile keys such as
times, paths and hashes of files whose safetensors metadata holds the output path), CSV tables,
and every tensor of every .safetensors / .pt file, byte for byte.

    python tools/identity_compare.py OUT_A OUT_B
"""

import json
import pathlib
import re
import sys

import numpy as np

A, B = map(pathlib.Path, sys.argv[1:3])
VOLATILE = re.compile(
    r"(time|elapsed|seconds|duration|date|started|finished|_at$|host|pid|version|wall|_s$|path|dir|file|cache|command|reproduce|python|torch|platform|sha|hash|created|storage|out$|^out|when|size|seconds|^hessian_term_by_group$|^layer_groups$|^adapter$)",
    re.I,
)


def strip(o, key=""):
    if isinstance(o, dict):
        return {k: strip(v, k) for k, v in o.items() if not VOLATILE.search(k)}
    if isinstance(o, list):
        return [strip(v, key) for v in o]
    if isinstance(o, str) and ("/work/" in o or "/tmp/" in o):
        return "<path>"
    return o


def tensors(p):
    if p.suffix == ".safetensors":
        from safetensors.numpy import load_file

        return {k: v for k, v in load_file(str(p)).items()}
    import torch

    obj = torch.load(str(p), weights_only=True, map_location="cpu")
    out = {}

    def walk(o, pre):
        if isinstance(o, torch.Tensor):
            out[pre] = o.numpy()
        elif isinstance(o, dict):
            [walk(v, f"{pre}.{k}") for k, v in o.items()]
        elif isinstance(o, (list, tuple)):
            [walk(v, f"{pre}.{i}") for i, v in enumerate(o)]
        else:
            out[pre] = np.array(repr(o))

    walk(obj, "")
    return out


bad = 0
n = 0
for fa in sorted(A.rglob("*")):
    if not fa.is_file() or ("democache" in fa.parts and fa.suffix == ".json"):
        pass
    if not fa.is_file():
        continue
    rel = fa.relative_to(A)
    fb = B / rel
    if fa.suffix in (".png", ".db", ".log") or fa.name in (".lock",):
        continue
    if not fb.exists():
        print("MISSING", rel)
        bad += 1
        continue
    n += 1
    try:
        if fa.suffix == ".json":
            ja, jb = strip(json.loads(fa.read_text())), strip(json.loads(fb.read_text()))
            if ja != jb:
                bad += 1
                print("DIFF json", rel)

                def diff(x, y, p=""):
                    if type(x) is not type(y):
                        print("  ", p, repr(x)[:80], repr(y)[:80])
                        return
                    if isinstance(x, dict):
                        for k in set(x) | set(y):
                            diff(x.get(k), y.get(k), p + "." + k)
                    elif isinstance(x, list):
                        if len(x) != len(y):
                            print("  ", p, "len", len(x), len(y))
                            return
                        for i, (u, v) in enumerate(zip(x, y, strict=False)):
                            diff(u, v, f"{p}[{i}]")
                    elif x != y:
                        print("  ", p, repr(x)[:80], repr(y)[:80])

                diff(ja, jb)
        elif fa.suffix in (".safetensors", ".pt"):
            ta, tb = tensors(fa), tensors(fb)
            ta = {k: v for k, v in ta.items() if not VOLATILE.search(k)}
            tb = {k: v for k, v in tb.items() if not VOLATILE.search(k)}
            if ta.keys() != tb.keys() or any(ta[k].tobytes() != tb[k].tobytes() for k in ta):
                bad += 1
                print(
                    "DIFF tensors",
                    rel,
                    [k for k in ta if k not in tb or ta[k].tobytes() != tb[k].tobytes()][:5],
                )
        elif fa.suffix == ".csv":
            import pandas as pd

            da, db = pd.read_csv(fa), pd.read_csv(fb)
            cols = [c for c in da.columns if not VOLATILE.search(c)]
            if list(da.columns) != list(db.columns) or not da[cols].equals(db[cols]):
                bad += 1
                print("DIFF csv", rel)
        elif fa.suffix in (".md", ".txt", ".toml"):

            def norm(s):
                return re.sub(
                    r"\d+(\.\d+)? ?(s|min|ms)\b", "<t>", re.sub(r"/(work|tmp)/\S+", "<path>", s)
                )

            if norm(fa.read_text()) != norm(fb.read_text()):
                bad += 1
                print("DIFF text", rel)
    except Exception as e:
        bad += 1
        print("ERR", rel, e)
print(f"{n} files compared, {bad} differ")
