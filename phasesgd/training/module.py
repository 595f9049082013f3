"""The Lightning module: exact online SGD of a student learning a teacher committee.

One ``training_step`` runs a chunk of many SGD steps (manual optimisation with the
analytic gradient of :meth:`CommitteeStudent.sgd_step`), so Lightning's per-batch
overhead is paid once per chunk. The module keeps its own SGD-step counter ν and
time t = ν/d^(1+ϑ); Lightning's ``global_step`` does not count SGD steps here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from ..infra.validation import (
    ConfigError,
    require_at_least,
    require_bool,
    require_choice,
    require_finite_or_null,
    require_nonnegative,
    require_positive,
    require_step_count,
)
from ..ode import ODESolution, SolverOptions, solve_ode
from ..sgd.compiled import CompilePolicy
from ..sgd.data import GaussianStream, StepChunks
from ..sgd.engines import Chain, WeightSpace, choose_engine
from ..sgd.networks import CommitteeStudent, Teacher
from ..sgd.seeding import generator
from ..sgd.timegrid import chunk_boundaries, measurement_steps, next_chunk
from ..theory.order_parameters import Overlaps, risk_from_overlaps
from ..theory.physics import RunPhysics
from ..theory.scaling import Scaling
from ..theory.schedules import LearningRate
from .history import History
from .prediction import Prediction

RISK_ESTIMATORS = ("overlaps", "test_set")
ENGINE_STATES = ("data", "chain")  # the engines' parts of a checkpoint (phasesgd.sgd.engines)


class DivergenceError(RuntimeError):
    """The run left the finite world: non-finite weights or a risk above the bound."""


@dataclass
class ChunkStart:
    """The state at the start of the chunk being run: what an interrupted chunk rewinds to."""

    sgd_steps: int
    state: dict


@dataclass
class Measurement:
    """How and when the order parameters and the risk are measured.

    ``risk_estimator``: 'overlaps' computes R exactly from (Q, M, P) (closed-form I2,
    Gauss–Hermite quadrature where none exists); 'test_set' averages ½(f* − f)² over
    ``test_set_size`` fixed Gaussian inputs. A run stops with :class:`DivergenceError`
    once any replica's risk exceeds ``max_risk`` or its weights are not finite.
    """

    t_min: float = 1e-2
    points_per_decade: int = 10
    dtype: str = "float64"
    risk_estimator: str = "overlaps"
    test_set_size: int = 10_000
    max_risk: float = 1e3
    keep_trajectories: bool = True

    def __post_init__(self) -> None:
        require_positive("measure.t_min", self.t_min)
        require_at_least("measure.points_per_decade", self.points_per_decade, 1)
        require_choice("measure.dtype", self.dtype, ("float32", "float64"))
        require_choice("measure.risk_estimator", self.risk_estimator, RISK_ESTIMATORS)
        require_at_least("measure.test_set_size", self.test_set_size, 1)
        require_positive("measure.max_risk", self.max_risk)
        require_bool("measure.keep_trajectories", self.keep_trajectories)


class OnlineSGD(L.LightningModule):
    """Online SGD of ``student`` on labels of ``teacher`` with inputs from ``data``.

    γ(t) = γ0 d^(−δ) g(t) from ``lr``; time t = ν/d^(1+ϑ) with ϑ from (κ, δ) unless
    ``theta`` is given. Runs until t = ``t_max``.
    """

    def __init__(
        self,
        teacher: Teacher,
        student: CommitteeStudent,
        data: GaussianStream,
        lr: LearningRate,
        t_max: float = 100.0,
        kappa: float = 0.0,
        theta: float | None = None,
        seed: int = 0,
        measure: Measurement | None = None,
        run_config: dict[str, Any] | None = None,
        engine: str = "sgd",
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.check_arguments(t_max=t_max, kappa=kappa, theta=theta, seed=seed)
        if teacher.dim != student.dim:
            raise ValueError(f"teacher and student must share d, got {teacher.dim} and {student.dim}")
        self.teacher, self.student, self.data, self.lr_schedule = teacher, student, data, lr
        self.scaling = Scaling(kappa=kappa, delta=lr.delta, theta=theta)
        self.t_max, self.seed = float(t_max), int(seed)
        self.measure = measure or Measurement()
        self.run_config = run_config or {}
        self.dim = student.dim
        self.engine = self._engine(choose_engine(engine, student.width, teacher.width, student.dim))
        log_steps = self.scaling.log10_steps(t_max, self.dim)
        require_step_count(
            math.inf if log_steps > 300 else 10**log_steps,
            f"t_max={t_max:g} at d={self.dim} with t = ν/d^{1 + self.scaling.time_exponent:g} "
            "(from kappa, lr.delta and theta)",
        )
        self.steps_per_unit = self.scaling.steps_per_unit_time(self.dim)
        self.measure_steps = measurement_steps(
            t_max, self.steps_per_unit, self.measure.t_min, self.measure.points_per_decade
        )
        self.scaling.warn_if_no_ode()  # after the clock's own refusals
        self._measure_set = set(self.measure_steps.tolist())
        self.sgd_steps = 0
        self.history = History()
        self.prediction: Prediction | None = None  # set by the ODE prediction when training ends
        self._engine_state: dict | None = None
        self._test_set: Tensor | None = None
        self._chunk_start: ChunkStart | None = None  # set while a chunk runs
        self.fit_start_steps: int | None = None  # ν when this fit's training began

    def _engine(self, name: str) -> WeightSpace | Chain:
        """The engine ``name`` ('sgd' or 'chain', :mod:`phasesgd.sgd.engines`) of this module's networks."""
        if name == "sgd":
            return WeightSpace(self.student, self.teacher, self.data)
        if self.measure.risk_estimator == "test_set":
            raise ConfigError(
                "measure.risk_estimator=test_set needs input vectors, which engine=chain does not have: "
                "use measure.risk_estimator=overlaps (the exact R(Q, M, P))"
            )
        drawn = self.student.weight.shape[-1] == self.dim
        return Chain(self.student, self.teacher, self.data.batch_size, drawn)

    @property
    def compile_policy(self) -> CompilePolicy | None:
        """When the SGD engine compiles blocks of steps (the caller's choice; None for the chain)."""
        return getattr(self.engine, "policy", None)

    @compile_policy.setter
    def compile_policy(self, policy: CompilePolicy) -> None:
        self.engine.policy = policy

    @staticmethod
    def check_arguments(t_max: Any = 100.0, kappa: Any = 0.0, theta: Any = None, seed: Any = 0, **_: Any) -> None:
        """The checks of this module's own keys; :func:`phasesgd.app.build.build_module` calls it
        before the student is allocated (κ sets its width)."""
        require_positive("t_max", t_max)
        require_nonnegative("kappa", kappa)
        require_finite_or_null("theta", theta)
        require_at_least("seed", seed, 0)

    # ----- time -------------------------------------------------------------------
    @property
    def t(self) -> float:
        """Current time t = ν / d^(1+ϑ)."""
        return self.sgd_steps / self.steps_per_unit

    def times(self) -> np.ndarray:
        """Times of the measurements so far."""
        return np.asarray(self.history.steps, dtype=np.float64) / self.steps_per_unit

    def learning_rates(self, start: int, stop: int) -> Tensor:
        """γ at SGD steps start..stop−1."""
        t = torch.arange(start, stop, dtype=torch.float64) / self.steps_per_unit
        return self.lr_schedule(t, self.dim)

    # ----- Lightning plumbing -----------------------------------------------------
    def configure_optimizers(self) -> None:
        return None  # updates are analytic, applied in training_step

    def train_dataloader(self) -> DataLoader:
        bounds = chunk_boundaries(self.measure_steps, self.data.chunk_steps, start=self.sgd_steps)
        return DataLoader(StepChunks(bounds), batch_size=None)

    def on_fit_start(self) -> None:
        self.engine.bind(self.seed, self.device)
        if self._engine_state is not None:
            self.engine.load_state_dict(self._engine_state)
            self._engine_state = None
        if not self.history.steps:
            self.record_measurement()

    def on_train_start(self) -> None:
        self.fit_start_steps = self.sgd_steps

    @property
    def advanced_this_fit(self) -> bool:
        """Whether this fit has run SGD steps: a failure before that (loading, start-up)
        must leave the files of the run it resumes untouched."""
        return self.fit_start_steps is not None and self.sgd_steps > self.fit_start_steps

    def on_fit_end(self) -> None:
        self.engine.close()

    def on_exception(self, exception: BaseException) -> None:
        self.rewind_unfinished_chunk()
        self.engine.close()

    # ----- consistency of an interrupted chunk ------------------------------------------
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._chunk_start = ChunkStart(self.sgd_steps, self.engine.snapshot())

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._chunk_start = None

    def rewind_unfinished_chunk(self) -> bool:
        """After an interruption inside a chunk (Ctrl-C, an error), put the weights and the
        data streams back to the chunk's start, where the step counter still is, so that
        what is saved next is a consistent state (exact resume). Returns whether it rewound.

        Once the chunk's SGD steps are done (``sgd_steps`` advanced), the state is already
        consistent at the chunk's end and nothing is rewound.
        """
        start = self._chunk_start
        self._chunk_start = None
        if start is None or self.sgd_steps != start.sgd_steps:
            return False
        self.engine.rewind(start.state)
        return True

    # ----- training -----------------------------------------------------------------
    def _next_chunk_size(self, stop: int) -> int:
        return next_chunk(self.measure_steps, self.data.chunk_steps, stop)

    @torch.no_grad()
    def training_step(self, batch: tuple[int, int], batch_idx: int) -> None:
        start, stop = int(batch[0]), int(batch[1])
        if start != self.sgd_steps:
            raise RuntimeError(f"chunk starts at step {start} but the run is at step {self.sgd_steps}")
        self.engine.advance(self.learning_rates(start, stop), self._next_chunk_size(stop))
        self.sgd_steps = stop
        if not self.engine.finite():
            raise DivergenceError(
                f"the student weights became non-finite between t={start / self.steps_per_unit:.4g} and t={self.t:.4g}"
            )
        if stop in self._measure_set:
            self.record_measurement()
            # Only when the risk is new: at R = 1 two log calls per chunk would cost as much as its steps.
            self.log("t", self.t, prog_bar=True, logger=False, batch_size=1)
            self.log("risk", float(self.history.risk[-1].mean()), prog_bar=True, logger=False, batch_size=1)
        if stop >= self.measure_steps[-1]:
            self.trainer.should_stop = True

    # ----- measurements -------------------------------------------------------------
    def physics(self) -> RunPhysics:
        """The parameters of this run that enter the ODE (:class:`~phasesgd.theory.physics.RunPhysics`)."""
        student, teacher, lr = self.student, self.teacher, self.lr_schedule
        return RunPhysics(
            gamma0=lr.gamma0,
            delta=self.scaling.delta,
            kappa=self.scaling.kappa,
            theta=self.scaling.theta,
            noise=teacher.noise,
            d=self.dim,
            teacher_activation=teacher.activation,
            student_activation=student.activation,
            teacher_second_layer=teacher.second_layer.detach().double().cpu().numpy(),
            second_layer_lr=getattr(student, "second_layer_lr", None),
            weight_decay=student.weight_decay,
            batch_size=self.data.batch_size,
            lr_factor=lr.factor,
        )

    def ode_physics(self) -> RunPhysics:
        """:meth:`physics` with the student's field-space rule where its ODE has no closed
        forms (a subclass: the quadrature route). ValueError for a student whose step is
        written in weight space only (:class:`ConfigError`): it has no ODE, and never the committee's."""
        student = self.student
        if student.has_closed_form_ode():
            return self.physics()
        rule = student.field_rule()
        if rule is None:
            raise ConfigError(
                f"{type(student).__name__} defines its step in weight space only (sgd_step): it has no ODE; "
                "define field_step(fields, labels, lr) for one (README, Extending)"
            )
        return replace(self.physics(), field_rule=rule)

    def predict(self, t_eval: Any, mode: str = "finite", solver: SolverOptions | str | None = None) -> ODESolution:
        """The ODE from this run's current overlaps (all replicas in one batch), solved by
        :func:`phasesgd.ode.solve_ode`. ``t_eval`` counts from now (add ``self.t`` to compare
        with the run's clock)."""
        now = self.overlaps()
        a = self.student.second_layer.detach().double()
        start = Overlaps(now.Q.double(), now.M.double(), now.P.double(), a)
        return solve_ode(start, self.ode_physics().shifted(self.t), t_eval, mode=mode, solver=solver)

    def overlaps(self) -> Overlaps:
        """(Q, M, P) of every replica, in the measurement dtype, from the engine."""
        return self.engine.overlaps(getattr(torch, self.measure.dtype))

    def population_risk(self) -> Tensor:
        """Risk of every replica, shape (R,), by ``measure.risk_estimator``."""
        if self.measure.risk_estimator == "test_set":
            return self._test_set_risk()
        o = self.overlaps()
        return risk_from_overlaps(
            o.Q,
            o.M,
            o.P,
            self.student.activation,
            self.teacher.activation,
            self.student.second_layer,
            self.teacher.second_layer,
        )

    def _test_set_risk(self) -> Tensor:
        if self._test_set is None:
            gen = generator(self.seed, "test_set")
            x = torch.randn(self.measure.test_set_size, self.dim, generator=gen, dtype=torch.float64)
            self._test_set = x.to(self.device, self.student.weight.dtype)
        x = self._test_set.expand(self.student.replicas, *self._test_set.shape)
        err = self.teacher(x).double() - self.student(x).double()
        return 0.5 * (err**2).mean(-1)

    def record_measurement(self) -> None:
        """Append (ν, risk, γ, Q, M, a) to the history; stop on divergence."""
        now = self.overlaps()
        Q, M = now.Q, now.M
        risk = self.population_risk().double().cpu().numpy()
        h = self.history
        keep = self.measure.keep_trajectories or not h.Q or self.sgd_steps >= self.measure_steps[-1]
        host = (Q.double().cpu().numpy(), M.double().cpu().numpy(), self.student.second_layer.double().cpu().numpy())
        h.append(
            self.sgd_steps,
            risk,
            float(self.learning_rates(self.sgd_steps, self.sgd_steps + 1)[0]),
            host if keep else None,
        )
        bad = ~np.isfinite(risk) | (risk > self.measure.max_risk)
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            raise DivergenceError(
                f"run diverged at t={self.t:.4g} (SGD step {self.sgd_steps}): replica {r} has risk {risk[r]:.4g}, "
                f"above measure.max_risk={self.measure.max_risk:g}; lower lr.gamma0 or raise measure.max_risk"
            )

    # ----- checkpoints ----------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["phasesgd"] = {
            "sgd_steps": self.sgd_steps,
            "history": self.history.state_dict(),
            **self.engine.state_dict(),  # 'data' (the SGD engine's streams) or 'chain'
            "config": self.run_config,
            "t_max": self.t_max,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Continue from a checkpoint (validated beforehand by :mod:`phasesgd.app.resume`). With a
        longer ``t_max`` the past measurement times stay and the new grid continues them."""
        state = checkpoint["phasesgd"]
        # Lightning's loop counters count chunks of a run that may now be longer (t_max):
        # the module's own step counter alone says where the run stands.
        checkpoint.pop("loops", None)
        self.sgd_steps = int(state["sgd_steps"])
        self.history = History.from_state_dict(state["history"])
        self._engine_state = {key: state[key] for key in ENGINE_STATES if key in state}
        past = np.asarray(self.history.steps, dtype=np.int64)
        self.measure_steps = np.concatenate([past, self.measure_steps[self.measure_steps > self.sgd_steps]])
        self._measure_set = set(self.measure_steps.tolist())
