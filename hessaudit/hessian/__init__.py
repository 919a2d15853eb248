"""The Hessian engine: block Hessian-vector products and the estimators built on them.

Loss throughout: softmax cross-entropy (``torch.nn.functional.cross_entropy``), mean over the
examples. Models must be in eval mode. Estimators take their own ``torch.Generator``.

- :mod:`.operator`: :class:`BlockHessian` (one parameter's diagonal block; ``"autograd"`` double
  backward or ``"func"`` forward-over-reverse), :func:`cross_term_forms` (the released code's
  per-layer readout of one full HVP), :func:`batch_quadratic_form`.
- :mod:`.per_example`: per-example block HVPs and exact per-example quadratic forms, vectorized
  with ``torch.func``.
- :mod:`.gauss_newton`: the exact one-JVP fast path for piecewise-linear networks.
- :mod:`.sweep`: the same quantities for many layers at once, from reverse passes shared by
  every layer (:class:`LayerwiseGaussNewton`, what ``measure`` uses).
- :mod:`.version`: the pre-issue-16 implementations, selectable for benchmarks only.
- :mod:`.lanczos`: batched Lanczos with full reorthogonalization, top eigenvalue.
- :mod:`.quadrature`: Gauss quadrature for v^T H^+ v with an error estimate behind its
  stopping rule.
- :mod:`.power`: power iteration.
- :mod:`.trace`: Hutchinson and Hutch++ trace estimates with standard errors.
"""

from hessaudit.hessian._util import random_rademacher
from hessaudit.hessian.gauss_newton import (
    BlockGaussNewton,
    confirm_piecewise_linear,
    default_rtol,
    gauss_newton_forms,
    gauss_newton_matvec,
    gauss_newton_probe_forms,
    is_piecewise_linear,
    logit_jvp,
    non_piecewise_linear_modules,
    per_example_gauss_newton_forms,
)
from hessaudit.hessian.lanczos import (
    EigenResult,
    LanczosInfo,
    LanczosTridiagonal,
    lanczos_top_eigenvalue,
    lanczos_tridiagonal,
)
from hessaudit.hessian.operator import (
    BlockHessian,
    batch_quadratic_form,
    cross_term_forms,
)
from hessaudit.hessian.per_example import (
    PerExampleBlockHessians,
    per_example_directional_second_derivative,
    per_example_hvp,
)
from hessaudit.hessian.power import power_iteration
from hessaudit.hessian.quadrature import QuadratureResult, lanczos_quadrature
from hessaudit.hessian.sweep import LayerwiseGaussNewton, OutputJacobianGaussNewton
from hessaudit.hessian.trace import (
    TraceResult,
    hutchinson_trace,
    hutchpp_trace,
    trace_from_samples,
)

__all__ = [
    "BlockGaussNewton",
    "BlockHessian",
    "EigenResult",
    "LanczosInfo",
    "LanczosTridiagonal",
    "LayerwiseGaussNewton",
    "OutputJacobianGaussNewton",
    "PerExampleBlockHessians",
    "QuadratureResult",
    "TraceResult",
    "batch_quadratic_form",
    "confirm_piecewise_linear",
    "cross_term_forms",
    "default_rtol",
    "gauss_newton_forms",
    "gauss_newton_matvec",
    "gauss_newton_probe_forms",
    "hutchinson_trace",
    "hutchpp_trace",
    "is_piecewise_linear",
    "lanczos_quadrature",
    "lanczos_top_eigenvalue",
    "lanczos_tridiagonal",
    "logit_jvp",
    "non_piecewise_linear_modules",
    "per_example_directional_second_derivative",
    "per_example_gauss_newton_forms",
    "per_example_hvp",
    "power_iteration",
    "random_rademacher",
    "trace_from_samples",
]
