"""Automatic choice of the finetuner's options (``hessaudit tune``); see
:mod:`hessaudit.robust.tune.run`.

* :mod:`~hessaudit.robust.tune.space`: the search space, its defaults and the ``--space`` file;
* :mod:`~hessaudit.robust.tune.settings`: :class:`TuneSettings`, validated once;
* :mod:`~hessaudit.robust.tune.results`: :class:`TrialRecord`, :class:`TuneResult` and the
  :class:`TuneDisplay` protocol;
* :mod:`~hessaudit.robust.tune.folder`: the search folder (``tune.json``, ``study.db``,
  ``trials.csv``, ``best.json``, ``trials/``, ``best/``) and its lock;
* :mod:`~hessaudit.robust.tune.scoring`: the noisy validation split and the objectives' scores;
* :mod:`~hessaudit.robust.tune.study`: the Optuna study, its trials and pruning;
* :mod:`~hessaudit.robust.tune.best`: ``best.json`` and the reproducing command line;
* :mod:`~hessaudit.robust.tune.run`: :func:`run_tune`, the entry point.

Importing this package imports neither torch nor Optuna (they are imported when a search runs).
"""

from hessaudit.robust.tune.results import TrialRecord, TuneDisplay, TuneResult
from hessaudit.robust.tune.run import run_tune
from hessaudit.robust.tune.settings import OBJECTIVES, TuneSettings
from hessaudit.robust.tune.space import DEFAULT_SPACE, ParamSpec, build_space, load_space_file

__all__ = [
    "DEFAULT_SPACE",
    "OBJECTIVES",
    "ParamSpec",
    "TrialRecord",
    "TuneDisplay",
    "TuneResult",
    "TuneSettings",
    "build_space",
    "load_space_file",
    "run_tune",
]
