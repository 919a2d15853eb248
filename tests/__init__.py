"""hessaudit's test suite, a package so that its helpers import by name (``from tests import
cases``) with no ``sys.path`` manipulation.

The folders mirror the package: ``hessian/`` (the engine against dense oracles), ``audit/``,
``inputs/``, ``robust/`` (and ``robust/tune/``), ``correlate/``, ``report/``, ``demo/``, and
``cli/`` for tests of the command line as a whole (exit codes, bad input, faults, help pages).
Shared helpers: :mod:`tests.cases` (nets and batches, turned into fixtures by ``conftest.py``),
:mod:`tests.oracles` (dense float64 oracles), :mod:`tests.files` (files on disk),
:mod:`tests.documents` (crafted audit JSON) and :mod:`tests.invoke` (in-process CLI runs).
"""
