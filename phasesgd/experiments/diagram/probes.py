"""Raw measurements of the phase diagram: risk curves on the SGD-step clock at one
(κ, δ, d), from simulations or from the finite-size ODE — a trace's ``source``, 'sgd' or
'ode' (docs/theory.md §5, "Measuring the diagram").

Nothing here reads the theory's regions or time scales: a measurement counts raw SGD steps
ν, and its length is found by the measurement itself (:class:`~.setup.RunLength`). It first
runs, on a log grid of steps, until the replica-mean risk has changed by the relative amount
ε — that step is ν*(d) — then on to ν_end = ``end_time``·ν*, recording the diagonal entries
Q_jj of every replica at the matched time ν_c = ``concentration_time``·ν*. The simulation
(source 'sgd') runs on one of two engines, a trace's ``engine`` (:mod:`phasesgd.sgd.engines`):
'sgd' trains the setup's students on fresh Gaussian inputs through the SGD loop (R replicas
batched), 'chain' runs the exact overlap chain of the same students, which has SGD's law of
the order parameters at every step and, at large d, allocates nothing of size d; 'auto' picks
the cheaper per (κ, δ, d) (:func:`~phasesgd.sgd.engines.choose_engine`). The ODE integrates
the finite-size equations of §4 at the actual γ, p, d on the clock t = ν/d (prefactors γ/p
and γ²/p²), from the same initial overlaps.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, replace
from fractions import Fraction
from typing import Any

import numpy as np
import torch

from ...infra.io import save_npz
from ...infra.threads import use_threads
from ...ode import ODEBudgetExceeded, SolverOptions, UnphysicalStateError, solve_ode
from ...sgd.data import GaussianStream
from ...sgd.engines import ENGINES, Chain, choose_engine
from ...sgd.loop import advance
from ...sgd.networks import CommitteeStudent, Teacher
from ...theory.order_parameters import Overlaps, order_parameters, risk_from_overlaps
from ...theory.physics import RunPhysics
from ...theory.scaling import learning_rate, student_width
from .estimators import crossing_step
from .setup import RunLength, Setup

PER_DECADE = 16  # measurements per decade of ν (every step up to 16)
SOURCES = ("sgd", "ode")
SGD_CHUNK = 256  # steps advanced at once between two checks of the stop


@dataclass
class Trace:
    """One probe's measurement at (κ, δ, d) from ``source`` ('sgd' or 'ode'): risk (R, T)
    on ``steps`` (T,), ν*, Q_jj (R, p) at ν_c (NaN for the ODE), and whether it failed
    (non-finite weights, or an ODE that left the physical region or its budget); ``engine``
    is what measured it: 'sgd' or 'chain' for the simulations, 'ode' for the ODE."""

    kappa: Fraction
    delta: Fraction
    d: int
    p: int
    source: str
    steps: np.ndarray
    risk: np.ndarray
    nu_star: float
    diag_q: np.ndarray
    failed: bool
    setup: Setup
    run_length: RunLength = RunLength()
    engine: str = "sgd"

    def meta(self) -> dict[str, Any]:
        """The trace file's description (JSON): the point, the outcome, the run length, the
        setup's flat summary and its networks' config blocks."""
        return {
            "kappa": str(self.kappa),
            "delta": str(self.delta),
            "d": self.d,
            "p": self.p,
            "source": self.source,
            "engine": self.engine,
            "nu_star": self.nu_star,
            "failed": self.failed,
            "run_length": asdict(self.run_length),
            **self.setup.summary(),
            "teacher": dict(self.setup.teacher),
            "student": dict(self.setup.student),
        }

    def save(self, path: str | os.PathLike) -> None:
        save_npz(path, steps=self.steps, risk=self.risk, diag_q=self.diag_q, meta=np.array(json.dumps(self.meta())))

    @staticmethod
    def load(path: str | os.PathLike) -> Trace:
        """A trace file, also one written before the names ``source``, ``run_length`` and
        ``engine`` (the SGD engine was then the only one)."""
        with np.load(path) as f:
            meta = json.loads(str(f["meta"]))
            arrays = {key: f[key] for key in ("steps", "risk", "diag_q")}
        if "teacher" in meta:
            setup = Setup(
                meta["teacher"], meta["student"], float(meta["gamma0"]), int(meta["replicas"]), int(meta["seed"])
            )
        else:
            setup = Setup.from_summary(meta)
        length = meta.get("run_length") or dict(meta["clock"])
        if "run_length" in length:  # the earlier Clock's name for end_time
            length["end_time"] = length.pop("run_length")
        source = meta.get("source", meta.get("mode"))
        return Trace(
            Fraction(meta["kappa"]),
            Fraction(meta["delta"]),
            int(meta["d"]),
            int(meta["p"]),
            source,
            nu_star=float(meta["nu_star"]),
            failed=bool(meta["failed"]),
            setup=setup,
            run_length=RunLength(**length),
            engine=meta.get("engine", "ode" if source == "ode" else "sgd"),
            **arrays,
        )


def trace_name(source: str, kappa: Fraction, delta: Fraction, d: int) -> str:
    """File name of a trace: the point in exact fractions, '/' written as ':'."""
    return f"{source}_kappa={str(kappa).replace('/', ':')}_delta={str(delta).replace('/', ':')}_d={d}.npz"


class SGDProbe:
    """The setup's R students trained by online SGD on raw steps; ``advance_to(ν)`` then
    ``observe()``. The weights are drawn on the CPU (the same for every device), then moved
    to ``device``."""

    def __init__(
        self, kappa: Fraction, delta: Fraction, d: int, setup: Setup, device: str | torch.device = "cpu"
    ) -> None:
        device = torch.device(device)
        self.teacher, self.student = setup.networks(kappa, d)
        self.teacher.to(device)
        self.student.to(device)
        self.stream = GaussianStream(chunk_steps=SGD_CHUNK, prefetch=False)
        self.stream.bind(d, setup.seed, range(setup.replicas), device, torch.float64)
        self.physics = setup.physics(kappa, delta, d)
        self.gamma = learning_rate(self.physics.gamma0, d, self.physics.delta)
        self.p, self.step = self.student.width, 0
        if device.type == "cpu":
            use_threads(setup.replicas * self.p * d)  # one SGD step's largest operation

    def advance_to(self, stop: int) -> bool:
        """Train until step ``stop``; False if the weights became non-finite."""
        while self.step < stop:
            n = min(stop - self.step, self.stream.chunk_steps)
            advance(self.student, self.teacher, self.stream, torch.full((n,), self.gamma, dtype=torch.float64))
            self.step += n
        return bool(torch.isfinite(self.student.weight).all())

    def overlaps(self) -> Overlaps:
        """Q, M, P and the students' second layers now."""
        return replace(order_parameters(self.student.weight, self.teacher.weight), a=self.student.second_layer.double())

    def observe(self) -> tuple[np.ndarray, np.ndarray]:
        """(risk (R,), Q_jj (R, p)) now."""
        return _observe(self.overlaps(), self.student, self.teacher)


class ChainProbe:
    """The same R students as :class:`SGDProbe` (the setup's networks at the cell), advanced by
    the exact overlap chain (:class:`~phasesgd.sgd.engines.Chain`), with the same interface.
    While the d-dimensional initial weights are small (:meth:`Chain.draws_weights`) they are
    drawn, so the chain starts from the SGD probe's Ω(0); above, no row of size d is built
    and Ω(0) is drawn from its law."""

    def __init__(
        self, kappa: Fraction, delta: Fraction, d: int, setup: Setup, device: str | torch.device = "cpu"
    ) -> None:
        device = torch.device(device)
        drawn = Chain.draws_weights(setup.replicas, student_width(setup.p0, d, kappa), setup.k, d)
        self.teacher, self.student = setup.networks(kappa, d, draw_weights=drawn)
        self.teacher.to(device)
        self.student.to(device)
        self.chain = Chain(self.student, self.teacher, batch_size=1, drawn=drawn)
        self.chain.bind(setup.seed, device)
        self.physics = setup.physics(kappa, delta, d)
        self.gamma = learning_rate(self.physics.gamma0, d, self.physics.delta)
        self.p, self.step = self.student.width, 0
        if device.type == "cpu":  # its operations are O(R p (p + k)), whatever d is
            use_threads(setup.replicas * self.p * (self.p + setup.k + 1))

    def advance_to(self, stop: int) -> bool:
        """Run the chain until step ``stop``; False if its coordinates became non-finite."""
        while self.step < stop:
            n = min(stop - self.step, SGD_CHUNK)
            self.chain.advance(torch.full((n,), self.gamma, dtype=torch.float64), 0)
            self.step += n
        return self.chain.finite()

    def overlaps(self) -> Overlaps:
        """Q, M, P and the students' second layers (the chain moves the student's own) now."""
        return replace(self.chain.overlaps(torch.float64), a=self.student.second_layer.double())

    def observe(self) -> tuple[np.ndarray, np.ndarray]:
        """(risk (R,), Q_jj (R, p)) now."""
        return _observe(self.overlaps(), self.student, self.teacher)


def _observe(o: Overlaps, student: CommitteeStudent, teacher: Teacher) -> tuple[np.ndarray, np.ndarray]:
    """(risk (R,), Q_jj (R, p)) of the overlaps ``o`` of ``student`` and ``teacher``."""
    s, t = student, teacher
    risk = risk_from_overlaps(o.Q, o.M, o.P, s.activation, t.activation, o.a, t.second_layer)
    return risk.cpu().numpy(), torch.diagonal(o.Q, dim1=-2, dim2=-1).cpu().numpy()


def probe_engine(engine: str, kappa: Fraction, d: int, setup: Setup) -> str:
    """The engine of the simulation at (κ, d): ``engine`` ('sgd', 'chain'; 'auto' resolved to the
    cheaper for the cell's p, k and d)."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    return choose_engine(engine, student_width(setup.p0, d, kappa), setup.k, d)


def finite_ode_physics(physics: RunPhysics, gamma: float) -> RunPhysics:
    """The cell's finite-size ODE on the SGD-step clock t = ν/d. Its prefactors, c1 = γ/p and
    c2 = (γ/p)², depend on (κ, δ) only through γ and p (p is read from the overlaps), so the
    cell is given as γ0 = γ at κ = δ = 0 with ϑ = 0: the solve then never classifies the cell
    (the measurement must not consult the theory), and a cell past the no-ODE line is
    integrated like any other, since what the ODE shows there is part of the comparison."""
    return replace(physics, gamma0=gamma, kappa=0.0, delta=0.0, theta=0.0)


class ODEProbe:
    """The finite-size ODE of §4 (:func:`phasesgd.ode.solve_ode`, mode 'finite') from the
    initial overlaps of the same R students, piecewise from its current state on t = ν/d,
    within :attr:`MAX_EVALUATIONS` drift evaluations over the whole measurement."""

    MAX_EVALUATIONS = 200_000
    SOLVER = SolverOptions(method="dopri5", rtol=1e-7, atol=1e-10, max_steps=None)

    def __init__(
        self, kappa: Fraction, delta: Fraction, d: int, setup: Setup, device: str | torch.device = "cpu"
    ) -> None:
        sgd = SGDProbe(kappa, delta, d, setup, device)
        self.p, self.d, self.step, self.evaluations = sgd.p, d, 0, 0
        self.physics = finite_ode_physics(sgd.physics, sgd.gamma)
        self.state = sgd.overlaps()
        self.risk = sgd.observe()[0]

    def advance_to(self, stop: int) -> bool:
        """Integrate to ν = ``stop``; False if the solution failed (left Ω ≥ 0, or the budget)."""
        if stop <= self.step:
            return True
        left = self.MAX_EVALUATIONS - self.evaluations
        if left < 1:
            return False
        solver = replace(self.SOLVER, max_evaluations=left)
        physics = self.physics.shifted(self.step / self.d)
        try:
            sol = solve_ode(self.state, physics, [0.0, (stop - self.step) / self.d], mode="finite", solver=solver)
        except (ValueError, UnphysicalStateError, ODEBudgetExceeded):
            return False
        self.evaluations += sol.evaluations
        like = self.state.P
        end = lambda x: torch.as_tensor(x[..., -1, :, :]).to(like)  # noqa: E731
        a = self.state.a if sol.a is None else torch.as_tensor(sol.a[..., -1, :]).to(like)
        self.state = Overlaps(end(sol.Q), end(sol.M), self.state.P, a)
        self.risk, self.step = sol.risk[..., -1], stop
        return bool(np.isfinite(self.risk).all())

    def observe(self) -> tuple[np.ndarray, np.ndarray]:
        """(risk (R,), NaN for Q_jj: the ODE has no replica spread)."""
        return self.risk, np.full((self.risk.shape[0], self.p), math.nan)


def next_step(step: int) -> int:
    """The next measurement step: every step up to PER_DECADE, then PER_DECADE per decade."""
    return step + 1 if step < PER_DECADE else max(step + 1, math.ceil(step * 10 ** (1 / PER_DECADE)))


def measure_point(
    kappa: Fraction,
    delta: Fraction,
    d: int,
    setup: Setup,
    run_length: RunLength = RunLength(),
    source: str = "sgd",
    device: str | torch.device = "cpu",
    engine: str = "sgd",
) -> Trace:
    """One :class:`Trace` at (κ, δ, d) from ``source`` ('sgd' or 'ode'; the simulations on
    ``engine``, 'sgd', 'chain' or 'auto'): run until the risk has moved by ε (ν*), then to
    ``end_time``·ν*, with Q_jj recorded at ``concentration_time``·ν*, on ``device``."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    engine = probe_engine(engine, kappa, d, setup) if source == "sgd" else "ode"
    probe = {"sgd": SGDProbe, "chain": ChainProbe, "ode": ODEProbe}[engine](kappa, delta, d, setup, device)
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
    while ok and math.isnan(nu_star) and step < run_length.max_steps:
        step = next_step(step)
        ok = record(step)
        nu_star = crossing_step(np.array(steps), np.nanmean(np.array(risks), 1), run_length.epsilon)
    diag_q = np.full_like(diag0, math.nan)
    if ok and math.isfinite(nu_star):
        matched = max(1, round(run_length.concentration_time * nu_star))
        end = max(matched, math.ceil(run_length.end_time * nu_star))
        grid = {matched, end}
        while step < end:
            step = next_step(step)
            grid.add(min(step, end))
        for stop in sorted(s for s in grid if s > steps[-1]):
            if not (ok := record(stop)):
                break
            if stop == matched:
                diag_q = probe.observe()[1]
    steps_array, risk_array = np.array(steps, dtype=np.int64), np.stack(risks, 1)
    return Trace(
        kappa, delta, d, probe.p, source, steps_array, risk_array, nu_star, diag_q, not ok, setup, run_length, engine
    )
