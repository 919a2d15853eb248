"""What a run folder may make hessaudit do on ``--resume``: nothing the user did not ask for.

A run folder is data. ``finetune --resume DIR`` reads ``DIR/config.json``, and a planted or
edited ``config.json`` must not be able to run code or reach the network. Two options in it can:
``model`` when it names a factory (``file.py:fn`` / ``pkg.mod:fn``: importing it executes the
file), and ``allow_hub``. The rule (docs/finetune.md, "Resuming a run you did not start"):

* A **timm model name** needs no confirmation: building it runs only timm's own code.
* hessaudit's **model zoo** (``hessaudit.zoo:fn``, e.g. ``hessaudit.zoo:digits_cnn``) needs
  none either: ``hessaudit`` is already imported, so ``hessaudit.zoo`` resolves inside the
  installed package, never from the current directory. (Only the zoo: another hessaudit
  function called as a "factory", ``hessaudit.cli:main`` say, would have side effects.)
* **Any other factory** is imported only when the user passes the same ``--model SPEC`` on the
  command line of this ``--resume`` (``resume_config(out, {"model": SPEC})`` from Python).
* For a **factory file**, the SHA-256 of the file is recorded in ``config.json``
  (``resolved.model_factory``) when the run starts, and a resume is refused, before anything is
  imported, unless the file at that path still has that SHA-256. A ``config.json`` without the
  record (an older hessaudit, or an edited file) cannot be resumed with a factory file.
* ``--allow-hub`` must be repeated on the command line when the saved run allowed the hub.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hessaudit.errors import HessauditError

#: The installed package's model zoo: trusted like timm names.
_BUILTIN_MODULES = ("hessaudit.zoo",)


def _split_factory(spec: str) -> tuple[str, str] | None:
    """``("file", path)`` / ``("module", name)`` for a factory spec; None for a timm name.

    Mirrors :func:`hessaudit.inputs.models.build_model`'s reading of ``--model``."""
    from hessaudit.inputs.models import is_factory_spec

    spec = spec.strip()
    if not is_factory_spec(spec):
        return None
    target = spec.rpartition(":")[0]
    if target.endswith(".py") or "/" in target or os.sep in target:
        return "file", target
    return "module", target


def needs_confirmation(spec: str) -> bool:
    """True when building ``spec`` would import code outside timm and hessaudit."""
    kind = _split_factory(spec)
    if kind is None:
        return False
    return kind[0] == "file" or kind[1] not in _BUILTIN_MODULES


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def factory_record(spec: str) -> dict[str, Any] | None:
    """What ``config.json`` records about the model factory (``resolved.model_factory``):
    ``{"spec", "kind", "path", "sha256"}`` for a file, ``{"spec", "kind", "module"}`` for a
    module, None for a timm name. Called before the factory is first imported."""
    kind = _split_factory(spec)
    if kind is None:
        return None
    if kind[0] == "module":
        return {"spec": spec, "kind": "module", "module": kind[1]}
    path = Path(kind[1]).expanduser()
    if not path.is_file():
        return None  # build_model reports the missing file with its own message
    return {"spec": spec, "kind": "file", "path": str(path.resolve()), "sha256": _sha256(path)}


def check_confirmed(out: Path, saved: Any, given: Mapping[str, Any]) -> None:
    """Refuse to resume ``saved`` (the run's FinetuneConfig) unless everything in it that runs
    code or uses the network was confirmed by the user in ``given`` (this invocation's
    options)."""
    if needs_confirmation(saved.model) and given.get("model") is None:
        raise HessauditError(
            f"--resume {out}: the run's model is the factory {saved.model!r}, whose code "
            "hessaudit would import; it is not imported on the word of a run folder",
            hint="if you trust that code, pass --model with the same value again to confirm it",
        )
    if saved.allow_hub and not given.get("allow_hub"):
        raise HessauditError(
            f"--resume {out}: the run allowed the model hub; pass --allow-hub again to allow it "
            "for this resume"
        )


def verify_factory(out: Path, spec: str, recorded: Any) -> None:
    """Refuse (before any import) a factory file whose SHA-256 differs from the one recorded
    in ``out/config.json`` when the run started, or that has no record."""
    kind = _split_factory(spec)
    if kind is None or kind[0] != "file":
        return
    path = Path(kind[1]).expanduser()
    if not (isinstance(recorded, Mapping) and isinstance(recorded.get("sha256"), str)
            and recorded.get("spec") == spec):
        raise HessauditError(
            f"--model {spec}: {out / 'config.json'} records no SHA-256 of this factory file, "
            "so hessaudit cannot tell that it is the code the run started with",
            hint="start a new run with --out (it records the file's SHA-256)",
        )
    if not path.is_file():
        raise HessauditError(f"--model {spec}: factory file {path} does not exist")
    if _sha256(path) != recorded["sha256"]:
        raise HessauditError(
            f"--model {spec}: the factory file {path} changed since the run in {out} started "
            "(SHA-256 differs); the run cannot be resumed with other code",
            hint="restore the file, or start a new run with --out",
        )
