"""hessaudit: Hessian-based audits of fine-tuned networks (Ju, Li & Zhang, ICML 2022).

Importing the package is cheap on purpose: torch and timm load only when a function that
needs them is called, so ``hessaudit --help`` stays fast.
"""

from hessaudit._version import __version__

__all__ = ["__version__"]
