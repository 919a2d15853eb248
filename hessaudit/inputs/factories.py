"""Models from the user's own code: ``--model path/to/file.py:function`` or
``--model package.module:function``.

* ``path/to/file.py:function``: the file is imported under a name of its own (its resolved
  path's hash, so two ``model.py`` files do not collide), with its folder on ``sys.path`` while
  it is imported and while ``function`` is called (so it can import its siblings);
* ``package.module:function``: imported with the current folder on ``sys.path``.

``function`` may be dotted (``module:Class.make``). It is called with ``num_classes=`` when its
signature accepts it (or ``**kwargs``) and must return an ``nn.Module``. Whatever the code does
while imported, called or running the model's forward (``sys.exit``, ``argparse``, an
exception) ends as one :class:`HessauditError` naming it (:mod:`hessaudit.inputs.user_code`),
never as an exit code of its own. Only the file or module the spec names is imported.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import nn

from hessaudit._messages import few, oneline
from hessaudit.errors import HessauditError
from hessaudit.inputs.heads import head_out_features
from hessaudit.inputs.user_code import guard_forward, user_code

__all__ = ["build_factory", "resolve_factory"]

_SHOW = 5


@contextlib.contextmanager
def _on_sys_path(folder: str) -> Iterator[None]:
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        yield
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(folder)


def _import_factory_file(path: Path, spec: str) -> Any:
    resolved = path.resolve()
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:10]
    module_name = f"_hessaudit_factory_{resolved.stem}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    module_spec = importlib.util.spec_from_file_location(module_name, resolved)
    if module_spec is None or module_spec.loader is None:
        raise HessauditError(f"--model {spec}: cannot import {path} as a Python file")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    try:
        with user_code(spec, f"importing {path}"), _on_sys_path(str(resolved.parent)):
            module_spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop(module_name, None)
        if not isinstance(exc, Exception) or isinstance(exc, HessauditError):
            raise  # KeyboardInterrupt, or user_code's one line about a SystemExit
        raise HessauditError(f"--model {spec}: importing {path} failed: {oneline(exc)}") from None
    return module


def _import_factory_module(name: str, spec: str) -> Any:
    try:
        with user_code(spec, f"importing {name}"), _on_sys_path(os.getcwd()):
            return importlib.import_module(name)
    except HessauditError:
        raise
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            raise HessauditError(
                f"--model {spec}: no module named {exc.name!r}",
                hint="give a file as path/to/file.py:function, or install the package",
            ) from None
        raise HessauditError(f"--model {spec}: importing {name} failed: {oneline(exc)}") from None
    except Exception as exc:
        raise HessauditError(f"--model {spec}: importing {name} failed: {oneline(exc)}") from None


def resolve_factory(spec: str) -> tuple[Any, str]:
    """The callable ``spec`` names, imported, and the folder to keep on ``sys.path`` while it
    is called (the file's folder, or the current folder for a module).

    Raises:
        HessauditError: a malformed spec, a missing file or module, an import that fails, a
            missing or non-callable attribute.
    """
    target, _, fn_name = spec.rpartition(":")
    if not target or not fn_name:
        raise HessauditError(
            f"--model {spec}: a factory is written path/to/file.py:function or "
            "package.module:function"
        )
    looks_like_file = target.endswith(".py") or "/" in target or os.sep in target
    if looks_like_file:
        path = Path(target).expanduser()
        if not path.is_file():
            raise HessauditError(
                f"--model {spec}: factory file {path} "
                + ("is not a file" if path.exists() else "does not exist")
            )
        module = _import_factory_file(path, spec)
        folder = str(path.resolve().parent)
    else:
        module = _import_factory_module(target, spec)
        folder = os.getcwd()
    obj: Any = module
    for part in fn_name.split("."):
        with user_code(spec, f"looking up {fn_name!r}"):  # a module __getattr__ is user code
            found = hasattr(obj, part)
        if not found:
            available = sorted(
                n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
            )
            raise HessauditError(
                f"--model {spec}: {target} has no function {fn_name!r}",
                hint=f"callables there: {few(available)}" if available else None,
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise HessauditError(f"--model {spec}: {fn_name!r} in {target} is not callable")
    return obj, folder


def _accepts(fn: Any, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def build_factory(
    spec: str,
    *,
    num_classes: int | None = None,
    allow_hub: bool = False,
    check_classes: bool = True,
) -> nn.Module:
    """Import the factory ``spec`` names, call it and return the ``nn.Module`` it builds.

    ``num_classes`` is passed when the factory accepts it; when it does not and
    ``check_classes`` is set, a head with another number of outputs is an error (with
    ``check_classes`` off the model keeps its head, and loading weights names any mismatch).
    ``allow_hub`` is not used: what a factory reads is its own code's business.

    Raises:
        HessauditError: see :func:`resolve_factory`; a factory that raises, exits, or returns
            something other than an ``nn.Module``.
    """
    fn, folder = resolve_factory(spec)
    kwargs: dict[str, Any] = {}
    if num_classes is not None and _accepts(fn, "num_classes"):
        kwargs["num_classes"] = num_classes
    try:
        with user_code(spec, "building the model"), _on_sys_path(folder):
            model = fn(**kwargs)
    except HessauditError:
        raise
    except Exception as exc:
        raise HessauditError(f"--model {spec}: the factory raised {oneline(exc)}") from None
    if not isinstance(model, nn.Module):
        raise HessauditError(
            f"--model {spec}: the factory returned {_what_it_returned(model)}, "
            "not a torch.nn.Module",
            hint="return the model alone (return model, not return model, config)"
            if isinstance(model, (tuple, list)) else None,
        )
    guard_forward(model, spec)
    if check_classes and num_classes is not None and "num_classes" not in kwargs:
        out = head_out_features(model)
        if out is not None and out != num_classes:
            raise HessauditError(
                f"--num-classes {num_classes}: the factory {spec} takes no num_classes argument "
                f"and builds a head with {out} outputs"
            )
    return model


def _what_it_returned(value: Any) -> str:
    """``a tuple of 2 (TinyNet, dict)``, ``None``, ``the class TinyNet``, ``a str``."""
    if value is None:
        return "None (a missing return statement?)"
    if isinstance(value, type):
        return f"the class {value.__name__} (call it to make the model)"
    if isinstance(value, (tuple, list)):
        kinds = ", ".join(type(v).__name__ for v in list(value)[:_SHOW])
        more = ", ..." if len(value) > _SHOW else ""
        return f"a {type(value).__name__} of {len(value)} ({kinds}{more})"
    return f"a {type(value).__name__}"
