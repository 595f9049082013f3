"""Raw measurements of the phase diagram: risk curves on the SGD-step clock at one
(κ, δ, d), from simulations or from the finite-size ODE (docs/theory.md §5, "Measuring the
diagram").

Nothing here reads the theory's regions or time scales: a run counts raw SGD steps ν, and
its length is found by the run itself. It first runs, on a log grid of steps, until the
replica-mean risk has changed by the relative amount ε (``Criteria.epsilon``) — that step
is ν*(d) — then on to ν_end = ``run_length``·ν*, recording the diagonal entries Q_jj of
every replica at the matched time ν_c = ``concentration_time``·ν*. The simulation drives
:class:`~phasesgd.sgd.networks.CommitteeStudent` directly on fresh Gaussian inputs (R replicas
batched); the ODE integrates the finite-size equations of §4 at the actual γ, p, d on the
clock t = ν/d (prefactors γ/p and γ²/p²), from the same initial overlaps.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import torch
from torchdiffeq import odeint

from ...infra.io import save_npz
from ...infra.threads import use_threads
from ...ode import ODEBudgetExceeded, OrderParameterDrift, Prefactors, UnphysicalStateError
from ...sgd.data import GaussianStream
from ...sgd.networks import CommitteeStudent, Teacher
from ...theory.activations import get_activation
from ...theory.integrals import FieldActivations
from ...theory.order_parameters import order_parameters, risk_from_overlaps
from ...theory.scaling import learning_rate
from .estimators import crossing_step

PER_DECADE = 16  # measurements per decade of ν (every step up to 16)
MODES = ("sgd", "ode")


@dataclass(frozen=True)
class Setup:
    """The fixed physics of a measured diagram: k teacher units, p = round(p0 d^κ) student
    units, γ = γ0 d^(−δ), label noise Δ, ``replicas`` students (or initial conditions of
    the ODE) batched, and the seed."""

    k: int = 1
    p0: int = 1
    gamma0: float = 4.0
    noise: float = 1e-3
    activation: str = "erf"
    replicas: int = 32
    seed: int = 0


@dataclass(frozen=True)
class Clock:
    """How long a measurement runs, in units of its own ν* (see the module docstring)."""

    epsilon: float = 0.25
    concentration_time: float = 8.0
    run_length: float = 64.0
    max_steps: int = 2_000_000


@dataclass
class Trace:
    """One measurement at (κ, δ, d): risk (R, T) on ``steps`` (T,), ν*, Q_jj (R, p) at
    ν_c (NaN for the ODE), and whether the run failed (non-finite weights, or an ODE that
    left the physical region or its budget)."""

    kappa: Fraction
    delta: Fraction
    d: int
    p: int
    mode: str
    steps: np.ndarray
    risk: np.ndarray
    nu_star: float
    diag_q: np.ndarray
    failed: bool
    setup: Setup
    clock: Clock = Clock()

    def meta(self) -> dict[str, Any]:
        return {
            "kappa": str(self.kappa),
            "delta": str(self.delta),
            "d": self.d,
            "p": self.p,
            "mode": self.mode,
            "nu_star": self.nu_star,
            "failed": self.failed,
            "clock": asdict(self.clock),
            **asdict(self.setup),
        }

    def save(self, path: str | os.PathLike) -> None:
        save_npz(path, steps=self.steps, risk=self.risk, diag_q=self.diag_q, meta=np.array(json.dumps(self.meta())))

    @staticmethod
    def load(path: str | os.PathLike) -> Trace:
        with np.load(path) as f:
            meta = json.loads(str(f["meta"]))
            arrays = {key: f[key] for key in ("steps", "risk", "diag_q")}
        setup = Setup(**{key: meta[key] for key in Setup.__dataclass_fields__})
        return Trace(
            Fraction(meta["kappa"]),
            Fraction(meta["delta"]),
            int(meta["d"]),
            int(meta["p"]),
            meta["mode"],
            nu_star=float(meta["nu_star"]),
            failed=bool(meta["failed"]),
            setup=setup,
            clock=Clock(**meta["clock"]),
            **arrays,
        )


def trace_name(mode: str, kappa: Fraction, delta: Fraction, d: int) -> str:
    """File name of a trace: the point in exact fractions, '/' written as ':'."""
    return f"{mode}_kappa={str(kappa).replace('/', ':')}_delta={str(delta).replace('/', ':')}_d={d}.npz"


class SGDProbe:
    """R students trained by online SGD on raw steps; ``advance_to(ν)`` then ``observe()``.
    The weights are drawn on the CPU (the same for every device), then moved to ``device``."""

    def __init__(self, kappa: Fraction, delta: Fraction, d: int, setup: Setup, device: str | torch.device = "cpu") -> None:
        s, device = setup, torch.device(device)
        self.teacher = Teacher(width=s.k, dim=d, activation=s.activation, noise=s.noise, seed=s.seed, dtype="float64")
        self.student = CommitteeStudent(width=s.p0, dim=d, activation=s.activation, replicas=s.replicas, kappa=float(kappa),
                                        seed=s.seed, dtype="float64")  # fmt: skip
        self.teacher.to(device)
        self.student.to(device)
        self.stream = GaussianStream(chunk_steps=256, prefetch=False)
        self.stream.bind(d, s.seed, range(s.replicas), device, torch.float64)
        self.gamma = learning_rate(s.gamma0, d, float(delta))
        self.p, self.step = self.student.width, 0
        if device.type == "cpu":
            use_threads(s.replicas * self.p * d)  # one SGD step's largest operation

    def advance_to(self, stop: int) -> bool:
        """Train until step ``stop``; False if the weights became non-finite."""
        while self.step < stop:
            n = min(stop - self.step, self.stream.chunk_steps)
            chunk = self.stream.draw(n)
            labels = self.teacher.labels(chunk.inputs, chunk.label_noise)
            for s in range(n):
                self.student.sgd_step(chunk.inputs[s], labels[s], self.gamma)
            self.stream.release(chunk)
            self.step += n
        return bool(torch.isfinite(self.student.weight).all())

    def observe(self) -> tuple[np.ndarray, np.ndarray]:
        """(risk (R,), Q_jj (R, p)) now."""
        overlaps = order_parameters(self.student.weight, self.teacher.weight)
        Q, M, P = overlaps.Q, overlaps.M, overlaps.P
        risk = risk_from_overlaps(Q, M, P, self.student.activation, self.teacher.activation)
        return risk.cpu().numpy(), torch.diagonal(Q, dim1=-2, dim2=-1).cpu().numpy()


class ODEProbe:
    """The finite-size ODE of §4 on t = ν/d (τ = d: prefactors c1 = γ/p, c2 = γ²/p²) from
    the initial overlaps of the same R students; integrated by torchdiffeq's dopri5."""

    MAX_EVALUATIONS = 200_000

    def __init__(self, kappa: Fraction, delta: Fraction, d: int, setup: Setup, device: str | torch.device = "cpu") -> None:
        sgd = SGDProbe(kappa, delta, d, setup, device)
        overlaps = order_parameters(sgd.student.weight, sgd.teacher.weight)
        Q, M, P = overlaps.Q, overlaps.M, overlaps.P
        self.p, self.d, self.step, self.P = sgd.p, d, 0, P
        gamma = sgd.gamma
        self.fields = FieldActivations(get_activation(setup.activation), get_activation(setup.activation), self.p)
        coefficients = Prefactors(drift=gamma / self.p, noise=(gamma / self.p) ** 2)
        self.drift = OrderParameterDrift(P, self.fields, coefficients, noise=setup.noise)
        self.drift.max_evaluations = self.MAX_EVALUATIONS
        self.y = self.drift.pack(Q, M)

    def advance_to(self, stop: int) -> bool:
        """Integrate to ν = ``stop``; False if the solution failed (left Ω ≥ 0, or the budget)."""
        if stop <= self.step:
            return True
        t = torch.tensor([self.step / self.d, stop / self.d], dtype=torch.float64, device=self.y.device)
        try:
            self.y = odeint(self.drift, self.y, t, method="dopri5", rtol=1e-7, atol=1e-10)[-1]
        except (ODEBudgetExceeded, UnphysicalStateError):
            return False
        self.step = stop
        return bool(torch.isfinite(self.y).all())

    def observe(self) -> tuple[np.ndarray, np.ndarray]:
        Q, M, _ = self.drift.split(self.y)
        risk = risk_from_overlaps(Q, M, self.P, self.fields.student, self.fields.teacher)
        return risk.cpu().numpy(), np.full((Q.shape[0], self.p), math.nan)


def next_step(step: int) -> int:
    """The next measurement step: every step up to PER_DECADE, then PER_DECADE per decade."""
    return step + 1 if step < PER_DECADE else max(step + 1, math.ceil(step * 10 ** (1 / PER_DECADE)))


def measure_point(
    kappa: Fraction, delta: Fraction, d: int, setup: Setup, clock: Clock = Clock(), mode: str = "sgd", device: str | torch.device = "cpu"
) -> Trace:
    """One :class:`Trace` at (κ, δ, d): run until the risk has moved by ε (ν*), then to
    ``run_length``·ν*, with Q_jj recorded at ``concentration_time``·ν*, on ``device``."""
    probe = (SGDProbe if mode == "sgd" else ODEProbe)(kappa, delta, d, setup, device)
    risk0, diag0 = probe.observe()
    steps, risks = [0], [risk0]
    ok, nu_star = True, math.nan

    def record(stop: int) -> bool:
        good = probe.advance_to(stop)
        risk, diag = probe.observe()
        steps.append(stop)
        risks.append(risk if good else np.full_like(risk0, math.nan))
        return good and bool(np.isfinite(risk).all())

    step = 0
    while ok and math.isnan(nu_star) and step < clock.max_steps:
        step = next_step(step)
        ok = record(step)
        nu_star = crossing_step(np.array(steps), np.nanmean(np.array(risks), 1), clock.epsilon)
    diag_q = np.full_like(diag0, math.nan)
    if ok and math.isfinite(nu_star):
        matched = max(1, round(clock.concentration_time * nu_star))
        end = max(matched, math.ceil(clock.run_length * nu_star))
        grid = {matched, end}
        while step < end:
            step = next_step(step)
            grid.add(min(step, end))
        for stop in sorted(s for s in grid if s > steps[-1]):
            if not (ok := record(stop)):
                break
            if stop == matched:
                diag_q = probe.observe()[1]
    return Trace(kappa, delta, d, probe.p, mode, np.array(steps, dtype=np.int64), np.stack(risks, 1), nu_star, diag_q, not ok, setup, clock)
