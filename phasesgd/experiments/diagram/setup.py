"""What a measured phase diagram holds fixed: :class:`Setup`, the physics and the networks of
every cell but its (κ, δ) and d, and :class:`RunLength`, how long a measurement runs.

A setup comes from the composed config (:meth:`Setup.from_config`): its teacher and student
blocks, built at a cell's d and κ by Hydra as ``scripts/train.py`` builds them, and γ0. The
physics of a cell is :meth:`phasesgd.theory.physics.RunPhysics.from_config` of the same
blocks, so a simulated cell and its ODE read one description.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

from ...infra.validation import require_at_least
from ...sgd.networks import CommitteeStudent, Teacher
from ...theory.physics import RunPhysics

# The defaults of a setup: one erf unit learns one erf unit, Δ = 10⁻³.
TEACHER = {"_target_": "phasesgd.Teacher", "width": 1, "activation": "erf", "noise": 1e-3}
STUDENT = {"_target_": "phasesgd.CommitteeStudent", "width": 1, "activation": "erf"}
# Arguments of the networks that a cell or the measurement sets, not the setup.
TEACHER_PER_CELL = ("dim", "seed", "dtype", "draw_weights")
STUDENT_PER_CELL = ("dim", "kappa", "replicas", "seed", "replica_offset", "dtype", "draw_weights")
# Arguments a setup names even at their class's default: what identifies the networks, and what
# RunPhysics.from_config reads with a default of its own (no second_layer_lr: a fixed readout).
TEACHER_KEPT = ("_target_", "width", "activation", "noise")
STUDENT_KEPT = ("_target_", "width", "activation", "second_layer_lr")
# The flat description of a setup in trace files, CSV rows and ``--where`` filters.
SUMMARY_KEYS = ("k", "p0", "gamma0", "noise", "activation", "replicas", "seed")


@dataclass(frozen=True)
class Setup:
    """The fixed part of a measured diagram: ``teacher`` and ``student``, config blocks
    (Hydra ``_target_`` and arguments, read-only) built at each cell's d and κ with p =
    round(p0 d^κ) units; γ = ``gamma0`` d^(−δ); ``replicas`` students (or initial conditions
    of the ODE) batched, and the seed."""

    teacher: Mapping[str, Any] = field(default_factory=lambda: dict(TEACHER))
    student: Mapping[str, Any] = field(default_factory=lambda: dict(STUDENT))
    gamma0: float = 4.0
    replicas: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        require_at_least("replicas", self.replicas, 1)
        for name, block in (("teacher", self.teacher), ("student", self.student)):
            missing = [key for key in ("_target_", "width", "activation") if key not in block]
            if missing:
                raise ValueError(f"{name}: the block needs {', '.join(missing)}")

    @classmethod
    def from_config(cls, cfg: Any, replicas: int | None = None) -> Setup:
        """The setup of a composed config (``cfg.teacher``, ``cfg.student``, ``cfg.lr``,
        ``cfg.seed``; ``replicas`` overrides ``cfg.replicas``). The measurement counts raw
        online-SGD steps at a constant γ, so a schedule or mini-batches are refused."""
        block = lambda key: OmegaConf.to_container(cfg[key], resolve=True)  # noqa: E731
        lr = block("lr")
        if str(lr.get("_target_", "LearningRate")).rpartition(".")[2] != "LearningRate":
            raise ValueError(f"lr: the diagram measures at a constant γ = γ0 d^(−δ), got {lr['_target_']}")
        if int(cfg.data.batch_size) != 1:
            raise ValueError(f"data.batch_size: the diagram measures online SGD (1), got {cfg.data.batch_size}")
        teacher = _own_arguments(block("teacher"), TEACHER_PER_CELL, TEACHER_KEPT)
        student = _own_arguments(block("student"), STUDENT_PER_CELL, STUDENT_KEPT)
        return cls(
            teacher, student, float(lr["gamma0"]), int(cfg.replicas if replicas is None else replicas), int(cfg.seed)
        )

    @classmethod
    def from_summary(cls, summary: Mapping[str, Any]) -> Setup:
        """The setup of a :meth:`summary` alone (traces written before setups kept their blocks)."""
        s = summary
        teacher = TEACHER | {"width": int(s["k"]), "activation": s["activation"], "noise": float(s["noise"])}
        student = STUDENT | {"width": int(s["p0"]), "activation": s["activation"]}
        return cls(teacher, student, float(s["gamma0"]), int(s["replicas"]), int(s["seed"]))

    @property
    def k(self) -> int:
        return int(self.teacher["width"])

    @property
    def p0(self) -> int:
        return int(self.student["width"])

    @property
    def noise(self) -> float:
        return float(self.teacher.get("noise", 0.0))

    @property
    def activation(self) -> str:
        """The activation's name ('erf'; 'erf student, relu teacher' where they differ)."""
        student, teacher = str(self.student["activation"]), str(self.teacher["activation"])
        return student if student == teacher else f"{student} student, {teacher} teacher"

    def summary(self) -> dict[str, Any]:
        """The flat description: :data:`SUMMARY_KEYS`."""
        return {key: getattr(self, key) for key in SUMMARY_KEYS}

    def physics(
        self, kappa: Fraction | float, delta: Fraction | float, d: int, theta: float | None = None
    ) -> RunPhysics:
        """The physics of the cell (κ, δ) at d through :meth:`RunPhysics.from_config`, on the
        clock t = ν/d^(1+ϑ) (``theta`` None: the region's ϑ)."""
        config = {
            "teacher": dict(self.teacher),
            "student": dict(self.student),
            "lr": {"gamma0": self.gamma0, "delta": float(delta)},
            "d": int(d),
            "kappa": float(kappa),
            "theta": theta,
            "data": {"batch_size": 1},
        }
        return RunPhysics.from_config(config)

    def networks(self, kappa: Fraction | float, d: int, draw_weights: bool = True) -> tuple[Teacher, CommitteeStudent]:
        """The teacher and the ``replicas`` students of the cell at d, in float64 on the CPU
        (the same draw for every device); without ``draw_weights`` (the overlap chain at large
        d) they hold no d-dimensional rows."""
        # Named only where it differs from the default, so that a network class without it still builds.
        extra = {} if draw_weights else {"draw_weights": False}
        teacher = instantiate(dict(self.teacher), dim=int(d), seed=self.seed, dtype="float64", _convert_="all", **extra)
        student = instantiate(
            dict(self.student),
            dim=int(d),
            kappa=float(kappa),
            replicas=self.replicas,
            seed=self.seed,
            replica_offset=0,
            dtype="float64",
            _convert_="all",
            **extra,
        )
        return teacher, student


def _own_arguments(block: dict[str, Any], per_cell: tuple[str, ...], kept: tuple[str, ...]) -> dict[str, Any]:
    """A network's config block without the arguments a cell sets and without those at their
    class's default (``kept`` stay): two configs that build the same networks give equal
    setups, so their traces are reused, also those written when setups held fewer keys."""
    defaults = {}
    for klass in reversed(get_class(block["_target_"]).__mro__):
        if "__init__" in vars(klass):
            for name, parameter in inspect.signature(vars(klass)["__init__"]).parameters.items():
                if parameter.default is not inspect.Parameter.empty:
                    defaults[name] = parameter.default
    return {
        key: value
        for key, value in block.items()
        if key not in per_cell and (key in kept or key not in defaults or value != defaults[key])
    }


@dataclass(frozen=True)
class RunLength:
    """How long a measurement runs, in units of its own ν*: until the replica-mean risk has
    moved by ``epsilon`` (ν*), with Q_jj recorded at ν_c = ``concentration_time``·ν*, up to
    ν_end = ``end_time``·ν*; the search for ν* gives up after ``max_steps`` steps."""

    epsilon: float = 0.25
    concentration_time: float = 8.0
    end_time: float = 64.0
    max_steps: int = 2_000_000
