"""The built-in demo behind ``hessaudit demo``: pretrain, fine-tune, audit, with no download.

1. Pretrain :func:`~hessaudit.zoo.digits_cnn` (a ReLU / BatchNorm CNN of ~15k parameters) on
   the 5-class ``digits-pretrain`` task (digit pairs 0/5, 1/6, ... share a class), with
   :func:`~hessaudit.zoo.pretrain_digits_cnn` and :data:`PRETRAIN_SETTINGS`.
2. Fine-tune it on the 10-class ``digits`` task (new head) with
   :func:`~hessaudit.robust.trainer.run_finetune` and :data:`FINETUNE_SETTINGS` (plain
   cross-entropy, clean labels, Adam lr 3e-3, 5 epochs, no constraint).
3. Audit the pair on the ``digits`` training part with the held-out part as ``--eval-data``
   (so the gap and G / gap show), with ``hessaudit measure``'s defaults.

The two checkpoints are cached in ``<cache>/<key>/`` where ``<cache>`` is ``--cache-dir``, else
``$HESSAUDIT_CACHE/demo``, else ``$XDG_CACHE_HOME/hessaudit/demo``, else
``~/.cache/hessaudit/demo``, and ``<key>`` is ``v<tool version>-<hash of the settings>``, so a
new version or new settings never reuse stale weights. A cache entry is trusted only when its
``manifest.json`` is present and both files match the SHA-256 it records; anything else is
rebuilt (deterministically: every step is seeded and runs on one CPU thread). Files are built
in a temporary folder beside the entry and moved into place with ``os.replace``, the manifest
last, so an interrupted run never leaves an entry that looks complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hessaudit._version import __version__
from hessaudit.errors import HessauditError

if TYPE_CHECKING:
    from hessaudit.audit.request import AuditRequest
    from hessaudit.audit.result import AuditResult

__all__ = [
    "FINETUNE_SETTINGS",
    "MODEL",
    "PRETRAIN_SETTINGS",
    "DemoCheckpoints",
    "DemoResult",
    "build_checkpoints",
    "cache_key",
    "default_cache_dir",
    "demo_request",
    "run_demo",
]

MODEL = "hessaudit.zoo:digits_cnn"
#: Keyword arguments of :func:`hessaudit.zoo.pretrain_digits_cnn`.
PRETRAIN_SETTINGS: dict[str, Any] = {"epochs": 5, "lr": 1e-2, "batch_size": 64, "seed": 0}
#: :class:`~hessaudit.robust.config.FinetuneConfig` fields of the demo's fine-tuning run.
FINETUNE_SETTINGS: dict[str, Any] = {
    "data": "digits",
    "eval_data": "digits",
    "loss": "ce",
    "optimizer": "adam",
    "lr": 3e-3,
    "schedule": "none",
    "epochs": 5,
    "batch_size": 32,
    "seed": 0,
}
MANIFEST = "manifest.json"
PRETRAINED = "pretrained.safetensors"
FINETUNED = "finetuned.safetensors"
_MANIFEST_SCHEMA = "hessaudit.demo-cache/1"


@dataclass(frozen=True)
class DemoCheckpoints:
    """The cached pair: paths, whether they came from the cache, and how they were made."""

    folder: Path
    pretrained: Path
    finetuned: Path
    cached: bool
    seconds: float
    manifest: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DemoResult:
    checkpoints: DemoCheckpoints
    audit: AuditResult
    audit_seconds: float

    def to_dict(self) -> dict[str, Any]:
        """The ``hessaudit.audit/1`` document, with a ``demo`` section added."""
        document = self.audit.to_dict()
        document["demo"] = {
            "cache_dir": str(self.checkpoints.folder),
            "cached": self.checkpoints.cached,
            "build_seconds": round(self.checkpoints.seconds, 3),
            "audit_seconds": round(self.audit_seconds, 3),
            "pretrain": self.checkpoints.manifest.get("pretrain"),
            "finetune": self.checkpoints.manifest.get("finetune"),
        }
        return document


def default_cache_dir() -> Path:
    """``$HESSAUDIT_CACHE/demo``, else ``$XDG_CACHE_HOME/hessaudit/demo``, else
    ``~/.cache/hessaudit/demo``."""
    root = os.environ.get("HESSAUDIT_CACHE", "").strip()
    if root:
        return Path(root).expanduser() / "demo"
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "hessaudit" / "demo"


def cache_key() -> str:
    """``v<version>-<12 hex digits of the settings' hash>``."""
    settings = {"model": MODEL, "pretrain": PRETRAIN_SETTINGS, "finetune": FINETUNE_SETTINGS}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    return f"v{__version__}-{digest[:12]}"


def _sha256(path: Path) -> str:
    from hessaudit.inputs.checkpoints import sha256_file

    return sha256_file(path)


def _valid_entry(folder: Path) -> dict[str, Any] | None:
    """The manifest of a complete, intact cache entry, or None."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        if manifest.get("schema") != _MANIFEST_SCHEMA or manifest.get("key") != folder.name:
            return None
        for name in (PRETRAINED, FINETUNED):
            if _sha256(folder / name) != manifest["sha256"][name]:
                return None
    except (OSError, ValueError, KeyError, TypeError, HessauditError):
        return None
    return manifest


def _make_folder(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HessauditError(
            f"--cache-dir {path.parent}: cannot create the cache folder ({exc.strerror})",
            hint="pass a writable --cache-dir or set HESSAUDIT_CACHE",
        ) from None
    if not os.access(path, os.W_OK):
        raise HessauditError(
            f"--cache-dir {path.parent}: the cache folder is not writable",
            hint="pass a writable --cache-dir or set HESSAUDIT_CACHE",
        )


def build_checkpoints(
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    rebuild: bool = False,
    log: Any = None,
) -> DemoCheckpoints:
    """Return the demo's pretrained and fine-tuned checkpoints, building them if needed.

    ``log`` (a callable taking one string) receives progress messages.
    """
    say = log or (lambda message: None)
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    folder = root / cache_key()
    start = time.perf_counter()
    manifest = None if rebuild else _valid_entry(folder)
    if manifest is not None:
        say(f"using the cached demo checkpoints in {folder}")
        return DemoCheckpoints(
            folder, folder / PRETRAINED, folder / FINETUNED, True,
            time.perf_counter() - start, manifest,
        )
    _make_folder(folder)
    with tempfile.TemporaryDirectory(prefix=".build-", dir=folder) as tmp_name:
        tmp = Path(tmp_name)
        with _one_thread():
            manifest = _build(tmp, say)
        manifest["key"] = folder.name
        # Remove a stale manifest first: between the moves below the entry must never look
        # complete with mismatched files.
        with contextlib.suppress(FileNotFoundError):
            (folder / MANIFEST).unlink()
        for name in (PRETRAINED, FINETUNED):
            os.replace(tmp / name, folder / name)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp / MANIFEST, folder / MANIFEST)
    say(f"cached the demo checkpoints in {folder}")
    return DemoCheckpoints(
        folder, folder / PRETRAINED, folder / FINETUNED, False,
        time.perf_counter() - start, manifest,
    )


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one CPU thread: the demo's weights then do not depend on the machine's
    core count, and a model this small runs faster on one thread than on several
    (docs/performance.md, "The demo on one thread")."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _build(tmp: Path, say: Any) -> dict[str, Any]:
    """Pretrain and fine-tune into ``tmp``; returns the manifest."""
    import torch

    from hessaudit.robust.config import FinetuneConfig
    from hessaudit.robust.trainer import run_finetune
    from hessaudit.zoo import pretrain_digits_cnn

    say(
        "pretraining digits_cnn on digits-pretrain (5 classes, "
        f"{PRETRAIN_SETTINGS['epochs']} epochs)"
    )
    t0 = time.perf_counter()
    pretrained = tmp / PRETRAINED
    pre_acc = pretrain_digits_cnn(pretrained, **PRETRAIN_SETTINGS)
    pre_seconds = time.perf_counter() - t0
    say(f"  held-out accuracy {pre_acc:.3f} ({pre_seconds:.1f} s)")
    say(
        "fine-tuning on digits (10 classes, new head, "
        f"{FINETUNE_SETTINGS['epochs']} epochs)"
    )
    t0 = time.perf_counter()
    run_dir = tmp / "run"
    result = run_finetune(
        FinetuneConfig(model=MODEL, pretrained=str(pretrained), out=str(run_dir),
                       **FINETUNE_SETTINGS)
    )
    ft_seconds = time.perf_counter() - t0
    final = result.final
    say(f"  held-out accuracy {final.get('heldout_acc', float('nan')):.3f} ({ft_seconds:.1f} s)")
    os.replace(run_dir / "final.safetensors", tmp / FINETUNED)
    shutil.rmtree(run_dir, ignore_errors=True)
    return {
        "schema": _MANIFEST_SCHEMA,
        "tool_version": __version__,
        "torch_version": torch.__version__,
        "model": MODEL,
        "pretrain": {**PRETRAIN_SETTINGS, "task": "digits-pretrain",
                     "heldout_acc": pre_acc, "seconds": round(pre_seconds, 2)},
        "finetune": {**FINETUNE_SETTINGS, "heldout_acc": final.get("heldout_acc"),
                     "train_loss": final.get("train_loss"), "seconds": round(ft_seconds, 2)},
        "sha256": {name: _sha256(tmp / name) for name in (PRETRAINED, FINETUNED)},
    }


def demo_request(checkpoints: DemoCheckpoints, **overrides: Any) -> AuditRequest:
    """The :class:`~hessaudit.audit.request.AuditRequest` of the demo's audit: ``measure``'s
    defaults on the ``digits`` training part, with the held-out part as ``--eval-data``;
    ``overrides`` replace any field."""
    from hessaudit.audit.request import AuditRequest

    options: dict[str, Any] = {"model": MODEL, "data": "digits", "eval_data": "digits"}
    return AuditRequest.for_checkpoints(
        checkpoints.pretrained, checkpoints.finetuned, **{**options, **overrides}
    )


def run_demo(
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    rebuild: bool = False,
    log: Any = None,
    progress: Any = None,
) -> DemoResult:
    """Build (or reuse) the demo checkpoints and audit them."""
    from hessaudit.audit.run import run_audit

    checkpoints = build_checkpoints(cache_dir, rebuild=rebuild, log=log)
    if log is not None:
        log("auditing the fine-tuned model against the pretrained one")
    t0 = time.perf_counter()
    with _one_thread():
        audit = run_audit(demo_request(checkpoints), progress=progress)
    return DemoResult(checkpoints, audit, time.perf_counter() - t0)
