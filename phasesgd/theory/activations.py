"""Activation functions σ and their derivatives σ', by name.

The registry holds the activations of docs/theory.md §1/§3: ``erf`` (σ(z) = erf(z/√2)),
``relu``, ``linear`` and ``tanh``. Any elementwise torch function can be used by
import path (``"package.module:function"`` or ``"package.module.function"``); its
derivative then comes from autograd. Closed-form Gaussian integrals live in
:mod:`phasesgd.theory.integrals`, keyed by :attr:`Activation.name`.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..infra.validation import ConfigError

ElementwiseFn = Callable[[Tensor], Tensor]

_SQRT_HALF = 1.0 / math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


@dataclass(frozen=True)
class Activation:
    """An elementwise activation σ with its derivative σ'.

    ``name`` is the registry key (or the import path of a user function); the
    Gaussian-integral code uses it to find closed forms.
    """

    name: str
    fn: ElementwiseFn
    derivative: ElementwiseFn

    def __call__(self, z: Tensor) -> Tensor:
        return self.fn(z)


def _erf(z: Tensor) -> Tensor:
    return torch.erf(z * _SQRT_HALF)


def _erf_prime(z: Tensor) -> Tensor:
    # d/dz erf(z/√2) = √(2/π) exp(−z²/2)
    return _SQRT_2_OVER_PI * torch.exp(-0.5 * z * z)


def _relu_prime(z: Tensor) -> Tensor:
    return (z > 0).to(z.dtype)


def _tanh_prime(z: Tensor) -> Tensor:
    return 1.0 - torch.tanh(z) ** 2


ACTIVATIONS: dict[str, Activation] = {
    "erf": Activation("erf", _erf, _erf_prime),
    "relu": Activation("relu", torch.relu, _relu_prime),
    "linear": Activation("linear", lambda z: z, torch.ones_like),
    "tanh": Activation("tanh", torch.tanh, _tanh_prime),
}


def autograd_derivative(fn: ElementwiseFn) -> ElementwiseFn:
    """σ' of an elementwise σ by autograd (works inside ``torch.no_grad``)."""

    def derivative(z: Tensor) -> Tensor:
        with torch.enable_grad():
            zz = z.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(fn(zz).sum(), zz)
        return grad

    return derivative


def _import_function(path: str) -> ElementwiseFn:
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ValueError(path)
    fn = getattr(importlib.import_module(module_name), attr)
    if not callable(fn):
        raise TypeError(f"{path} is not callable")
    return fn


def get_activation(spec: str | Activation) -> Activation:
    """Look up an activation by registry name or import path.

    Raises ``ValueError`` naming the allowed choices when ``spec`` is neither.
    """
    if isinstance(spec, Activation):
        return spec
    if spec in ACTIVATIONS:
        return ACTIVATIONS[spec]
    try:
        fn = _import_function(spec)
    except (ValueError, ImportError, AttributeError, TypeError) as err:
        raise ConfigError(
            f"activation: unknown activation {spec!r}; choose one of {sorted(ACTIVATIONS)} "
            f"or give an import path 'package.module:function' ({err})"
        ) from None
    activation = Activation(spec, fn, autograd_derivative(fn))
    _try_once(activation)
    return activation


def _try_once(activation: Activation) -> None:
    """Call a user's σ and σ' once on a small float64 tensor: each must return a finite
    tensor of the input's shape, so that a wrong import path (``os:system``) is refused
    before a run starts rather than inside training."""
    z = torch.linspace(-3.0, 3.0, 7, dtype=torch.float64).reshape(7, 1)
    try:
        values, slopes = activation.fn(z), activation.derivative(z)
        ok = all(
            isinstance(v, Tensor) and v.shape == z.shape and bool(torch.isfinite(v).all()) for v in (values, slopes)
        )
        problem = "did not return a finite tensor of its input's shape"
    except Exception as err:  # any failure of user code means: not an elementwise torch function
        ok, problem = False, f"raised {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    if not ok:
        raise ConfigError(
            f"activation: {activation.name!r} is not an elementwise torch function: "
            f"on a (7, 1) float64 tensor it {problem}"
        )
