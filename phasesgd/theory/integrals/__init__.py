"""Gaussian integrals over the local fields of student and teacher (docs/theory.md §3).

Fields are ordered students first, then teachers: ``n = p + k`` and the joint
covariance is ``Ω = [[Q, M], [Mᵀ, P]]`` with shape ``(..., n, n)``. Every field index
carries its own unit's activation (σ for students, σ* for teachers). The four
integrals (:mod:`.expectations`) feed the risk (§2) and the ODE drift (§4); the drift
uses them contracted with the error weights (:mod:`.weighted`).

Routes. Each block of index tuples (grouped by the activations involved) uses a
closed form when one is registered for its activation names (:mod:`.closed_forms`),
and otherwise a generic tensor-product Gauss–Hermite quadrature (:mod:`.hermite`;
``route="generic"`` forces it everywhere). Closed forms: erf, linear and relu for I2,
I3 and J2 (including every mixed pair of these three); erf and linear for I4; relu I4
(relu students with relu or linear c, d fields) by a one-dimensional Price's-theorem
integral (:mod:`.relu_i4`), accurate to 1e-8 · √(C_cc C_dd) (the integral's scale).

Two reductions keep the numerics cheap and exact:

- I3 is linear in λb. Stein's lemma on λb gives
  ``I3[j,b,c] = Ω_jb α_jc + Ω_bc β_jc`` with ``α_jc = E[σ''(λj) σ_c(λc)]`` and
  ``β_jc = E[σ'(λj) σ_c'(λc)]``, so only the (j, c) pairs need integrating.
- A linear student (σ' = 1) turns I4 into I2 of the (c, d) fields.

Everything follows the dtype and device of ``omega``; no Python loop runs over
hidden units (loops are over the ≤ 4 activation blocks and over memory chunks).
"""

from .closed_forms import has_closed_form_i2
from .expectations import i2, i3, i4, j2, stein_coefficients
from .fields import FieldActivations, Route, covariance
from .weighted import i3_weighted, upsilon

__all__ = [
    "FieldActivations",
    "Route",
    "covariance",
    "has_closed_form_i2",
    "i2",
    "i3",
    "i3_weighted",
    "i4",
    "j2",
    "stein_coefficients",
    "upsilon",
]
