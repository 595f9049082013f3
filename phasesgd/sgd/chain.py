"""The exact overlap chain: SGD's law of the order parameters without d-dimensional vectors (THEORY.md §6).

The n = p + k rows V = [W; W*] (student rows first, then teacher rows) are written as V = F Uᵀ with U (d × m)
orthonormal columns and F (n × m) the coordinates, so that Ω = V Vᵀ/d = F Fᵀ/d. A fresh input splits as
x = U z + (orthogonal part), z ~ N(0, I_m), and the fields are (λ, λ*) = V x/√d = F z/√d. A student's step

    w_j ← s w_j + κ Σ_b c_bj x_b          (s, κ, c functions of the fields and the labels only)

is its :class:`~phasesgd.theory.field_step.FieldStep`, the one definition of its update, which its ``field_step``
(fields, labels, lr) returns and which the weight-space engine applies to W (``FieldStep.apply``). Here it moves
the coordinates to F' = [S F + κ Σ_b c_b z_bᵀ | κ [c_1 … c_B] T] (c zero on the teacher rows: the teacher never
moves), T lower triangular, T Tᵀ ~ Wishart_B(d − m, I) the Gram of the orthogonal parts of the B inputs (Bartlett).
The chain of Ω has exactly SGD's law at every step and every d; U is never needed and nothing of size d is allocated.

In coordinates an input is x_b = [z_b | T_b] (m + B numbers: T_b the b-th row of T): the columns m … m + B − 1 of F
are zero before the step, so the fields are F x_b/√d and the update, new columns included, is
F' = s F + κ Σ_b c_b x_bᵀ, one rank-B update. The inputs of all the steps up to the next compression are drawn
ahead, in that layout.

Internally the basis is chosen so that the teacher rows are [C | 0] with C (k × k) lower triangular and the same
for all replicas (the teacher never moves), so only the p student rows are stored and updated;
:attr:`OverlapChain.coordinates` assembles the full F (R, n, m).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from ..theory.activations import Activation, get_activation
from ..theory.field_step import FieldStep

__all__ = ["FieldRule", "OverlapChain", "TeacherSpec", "bartlett_factor", "standard_normal"]

DTYPE = torch.float64

# Below this many numbers torch.randn (one kernel call) beats the few calls of Box–Muller; above, Box–Muller on
# 53-bit integers is cheaper per number on the CPU than torch's float64 normal (and uniform) sampler.
_BOX_MULLER_MIN = 1024
_TWO_PI = 2.0 * math.pi


class FieldRule(Protocol):
    """A student's step in field space, the signature of ``CommitteeStudent.field_step``: fields λ (R, B, p),
    labels y (R, B) and the learning rate γ (a float, or one per replica, (R,)) → its
    :class:`~phasesgd.theory.field_step.FieldStep`. It reads its own second layer, which must be the chain's
    (:meth:`OverlapChain.share_second_layer`), and must not write into its inputs (views of the chain's state and
    of random numbers drawn ahead)."""

    def __call__(self, fields: Tensor, labels: Tensor, lr: float | Tensor, /) -> FieldStep: ...


# ---------------------------------------------------------------------------------------------------------------
# Random numbers
# ---------------------------------------------------------------------------------------------------------------


def standard_normal(shape: tuple[int, ...] | list[int], generator: torch.Generator) -> Tensor:
    """Independent N(0, 1) numbers, float64, on the generator's device.

    On the CPU, for many numbers, Box–Muller on 53-bit uniforms: from 63 random bits per integer (int64
    ``random_``) keep the top 53, u₁ = (i₁ + 1)/2⁵³ ∈ (0, 1], u₂ = i₂/2⁵³ ∈ [0, 1), and return
    √(−2 ln u₁) (cos, sin)(2π u₂); otherwise torch.randn. Both are exact in law (up to float64 rounding)."""
    shape = tuple(int(s) for s in shape)
    count = math.prod(shape)
    device = generator.device
    if device.type != "cpu" or count < _BOX_MULLER_MIN:
        return torch.randn(shape, generator=generator, dtype=DTYPE, device=device)
    half = (count + 1) // 2
    bits = torch.empty(2, half, dtype=torch.int64, device=device).random_(generator=generator)
    u = bits.bitwise_right_shift_(10).to(DTYPE)
    radius = u[0].add_(1.0).mul_(2.0**-53).log_().mul_(-2.0).sqrt_()
    angle = u[1].mul_(_TWO_PI * 2.0**-53)
    out = torch.empty(2, half, dtype=DTYPE, device=device)
    torch.mul(radius, torch.cos(angle), out=out[0])
    torch.mul(radius, angle.sin_(), out=out[1])
    return out.view(-1)[:count].view(shape)


def _chi2(dof: Tensor, generator: torch.Generator) -> Tensor:
    """χ²(ν) = 2 Gamma(ν/2, 1), elementwise over the tensor of degrees of freedom ν."""
    return torch._standard_gamma(dof * 0.5, generator=generator).mul_(2.0)


def bartlett_factor(dof: float, size: int, replicas: int, generator: torch.Generator) -> Tensor:
    """Bartlett's factor of Wishart_size(ν, I), ν = ``dof``: T (replicas, size, size) lower triangular with

        T_ii = √χ²(ν − i)  (i = 0 … size − 1),   T_ij ~ N(0, 1) for i > j,   all independent,

    so that T Tᵀ ~ Wishart_size(ν, I): T is the transposed R factor of the QR of a ν × size Gaussian matrix.
    Draws the off-diagonal normals first, then the χ² variables. Needs ν ≥ size."""
    if dof < size:
        raise ValueError(f"bartlett_factor: Wishart_{size}({dof}) needs at least {size} degrees of freedom")
    off = standard_normal((replicas, size * (size - 1) // 2), generator)
    return _bartlett_from(off, dof, size, generator)


def _bartlett_from(off: Tensor, dof: float, size: int, generator: torch.Generator) -> Tensor:
    """Bartlett's factor (see :func:`bartlett_factor`) from given off-diagonal normals ``off`` (R, size(size−1)/2)."""
    replicas = off.shape[0]
    dofs = dof - torch.arange(size, dtype=DTYPE, device=off.device)
    diag = _chi2(dofs.expand(replicas, size).contiguous(), generator).sqrt_()
    if size == 1:
        return diag[:, :, None]
    T = torch.diag_embed(diag)
    rows, cols = torch.tril_indices(size, size, -1, device=off.device)
    T[:, rows, cols] = off
    return T


# ---------------------------------------------------------------------------------------------------------------
# The chain
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TeacherSpec:
    """The teacher committee f*(x) = (1/k) Σ_r a*_r σ*(λ*_r): σ* (``activation``, an
    :class:`~phasesgd.theory.activations.Activation` or its name), a* (``readout``, None: all ones) and, for
    :meth:`OverlapChain.from_law`, its rows' law: 'orthonormal' (P = I) or 'gaussian' (Gaussian rows rescaled to
    norm √d)."""

    activation: Activation | str = "erf"
    readout: tuple[float, ...] | list[float] | Tensor | None = None
    init: str = "orthonormal"


def _positive_diagonal(R: Tensor) -> Tensor:
    """Flip the rows of upper-triangular R factors (…, r, c) so that their diagonal is ≥ 0 (the unique QR)."""
    diag = torch.diagonal(R, dim1=-2, dim2=-1)
    sign = torch.where(diag < 0, -1.0, 1.0).to(R.dtype)
    return R * sign[..., None]


class _Block:
    """The random numbers of a run of c steps at known widths m_t (one or more compression cycles), drawn ahead
    (the normals of all c steps in one call, then their χ² variables), and what follows from them alone: for step
    t the inputs in coordinates x_t/√d = [z_t | T_t]/√d (R, B, m_t + B), one after the other in ``inputs`` (flat,
    so that a step reads one contiguous piece), the label noise ξ (c, R, B) and the teacher's output f*(λ*_t)
    (c, R, B), λ*_t = C z_t[:k]/√d; the labels f* + √Δ ξ of the noise Δ last asked for."""

    FIELDS = ("widths", "batch", "d", "inputs", "xi", "teacher_output", "noise", "index")

    def __init__(self, widths, batch, d, inputs, xi, teacher_output, noise=0.0, index=0) -> None:
        self.widths, self.batch, self.d, self.index = tuple(int(m) for m in widths), int(batch), int(d), int(index)
        self.inputs, self.xi, self.teacher_output = inputs, xi, teacher_output
        self._steps: tuple[list[Tensor], list[Tensor], list[Tensor]] | None = None
        # where each step's inputs start, and the first step of each compression cycle (the width falls back)
        self.offsets, replicas = [0], xi.shape[1]
        for m in self.widths:
            self.offsets.append(self.offsets[-1] + replicas * batch * (m + batch))
        starts = [t for t in range(len(self.widths)) if t == 0 or self.widths[t] < self.widths[t - 1]]
        self.cycle_end = dict(zip(starts, [*starts[1:], len(self.widths)]))
        self.set_noise(noise)

    def set_noise(self, noise: float) -> None:
        """The labels y = f* + √Δ ξ of every step for the label-noise variance Δ = ``noise``."""
        self.noise = float(noise)
        labels = self.teacher_output
        if self.noise:
            labels = torch.add(labels, self.xi, alpha=math.sqrt(self.noise))
        self.labels, self._steps = labels, None

    @property
    def steps(self) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Per step: the inputs (R, B, m_t + B), their transpose and the labels (R, B); views made once per block
        where steps go one by one (indexing costs a dispatch per call, the same order of time as a small op)."""
        if self._steps is None:
            R, B, at = self.xi.shape[1], self.batch, self.offsets
            inputs = [self.inputs[at[t] : at[t + 1]].view(R, B, m + B) for t, m in enumerate(self.widths)]
            self._steps = (inputs, [x.transpose(1, 2) for x in inputs], list(self.labels.unbind(0)))
        return self._steps

    @property
    def done(self) -> bool:
        return self.index >= len(self.widths)

    def state(self) -> dict:
        return {name: getattr(self, name) for name in self.FIELDS}


class OverlapChain:
    """R replicas of the order parameters Ω = F Fᵀ/d of SGD, simulated exactly in coordinates (THEORY.md §6).

    State: the student coordinates (R, p, m) in a basis whose first k columns span the teacher, the teacher rows
    [C | 0] (C (k, k) lower triangular, shared by the replicas), the second layer a (R, p), the dimension d (any
    int; nothing of size d is allocated), the teacher (σ*, a*), a torch.Generator, and the random numbers already
    drawn for the next steps. All float64, on the generator's device.

    The student coordinates live in a preallocated buffer of ``max_width`` columns: a step writes B new columns
    in place, and when the next step would not fit, a compression (:meth:`compress`) replaces the orthogonal part
    (columns k…m) by a p × p triangular factor with the same Gram, which leaves F Fᵀ unchanged and m = k + p.

    Random numbers are drawn ahead, for the steps of up to ``block_cycles`` compression cycles (the widths are known
    ahead: a cycle starts at k + p), at most about ``block_numbers`` numbers at a time: they do not depend on the
    state, so this is the law of step-by-step draws, and it takes the per-step cost of drawing and of the teacher's
    side out of the step. The block is part of the state; changing the batch size or d discards what is left of
    it.
    """

    #: Upper bound on the normals drawn ahead in one block (memory: 8 bytes each).
    block_numbers: int = 2**17
    #: Upper bound on the compression cycles one block spans (drawing costs a few dozen calls per block).
    block_cycles: int = 64

    def __init__(
        self,
        student: Tensor,
        teacher_factor: Tensor,
        d: int,
        generator: torch.Generator,
        second_layer: Tensor | None = None,
        teacher: TeacherSpec | None = None,
        max_width: int | None = None,
    ) -> None:
        """student (R, p, m): coordinates of the student rows, whose first k columns are along the teacher;
        teacher_factor C (k, k): the teacher rows are [C | 0]. second_layer a (R, p), default ones."""
        self.generator = generator
        self.device = generator.device
        student = torch.as_tensor(student, dtype=DTYPE, device=self.device)
        if student.ndim != 3:
            raise ValueError(f"OverlapChain: student coordinates must be (R, p, m), got {tuple(student.shape)}")
        self.replicas, self.p, width = student.shape
        self.teacher_factor = torch.as_tensor(teacher_factor, dtype=DTYPE, device=self.device).clone()
        self.k = self.teacher_factor.shape[0]
        if self.teacher_factor.shape != (self.k, self.k) or width < self.k:
            raise ValueError(
                f"OverlapChain: teacher factor {tuple(self.teacher_factor.shape)} must be (k, k) with k <= m = {width}"
            )
        self.d = int(d)
        self.teacher = teacher if teacher is not None else TeacherSpec()
        self.teacher_activation = get_activation(self.teacher.activation)
        a_star = self.teacher.readout
        a_star = torch.ones(self.k) if a_star is None else torch.as_tensor(a_star)
        self.teacher_readout = a_star.to(DTYPE).to(self.device).reshape(self.k)
        if second_layer is None:
            second_layer = torch.ones(self.replicas, self.p)
        self.second_layer = torch.as_tensor(second_layer, dtype=DTYPE, device=self.device).clone()
        self.second_layer = self.second_layer.expand(self.replicas, self.p).contiguous()
        self.max_width = int(max_width) if max_width is not None else self.default_max_width(self.p, self.k)
        self.steps = 0
        self._block: _Block | None = None
        self._indices: dict[tuple, Tensor | tuple[Tensor, Tensor, Tensor]] = {}  # layouts of blocks, by widths
        self._set_student(student)

    @staticmethod
    def default_max_width(p: int, k: int) -> int:
        """k + p coordinates after compression plus a slack of max(p, 16) columns: compressing costs about as
        much as a few steps, so the slack trades that against the per-step cost, which grows with m."""
        return k + p + max(p, 16)

    # -- construction ------------------------------------------------------------------------------------------

    @classmethod
    def from_weights(
        cls,
        W: Tensor,
        W_star: Tensor,
        d: int,
        generator: torch.Generator,
        second_layer: Tensor | None = None,
        teacher: TeacherSpec | None = None,
        max_width: int | None = None,
    ) -> OverlapChain:
        """Exact coordinates of given d-dimensional weights: W (R, p, d) or (p, d), W* (k, d).

        Per replica the LQ of V = [W*; W] (teacher rows first), i.e. the QR of Vᵀ with a non-negative diagonal:
        V = L Qᵀ, F = L (n × n lower triangular), so F Fᵀ/d = V Vᵀ/d is the SGD engine's Ω(0) for these weights
        and the teacher rows are [C | 0] with the same C for every replica. Needs p + k ≤ d.
        """
        W = torch.as_tensor(W, dtype=DTYPE, device=generator.device)
        W_star = torch.as_tensor(W_star, dtype=DTYPE, device=generator.device)
        if W.ndim == 2:
            W = W[None]
        replicas, p, dim = W.shape
        k = W_star.shape[0]
        if dim != int(d) or W_star.shape != (k, dim):
            raise ValueError(f"from_weights: W {tuple(W.shape)} and W* {tuple(W_star.shape)} must have d = {d} columns")
        if p + k > dim:
            raise ValueError(f"from_weights: the chain needs p + k <= d, got p = {p}, k = {k}, d = {dim}")
        V = torch.cat([W_star.expand(replicas, k, dim), W], dim=1)
        L = _positive_diagonal(torch.linalg.qr(V.transpose(1, 2), mode="r").R).transpose(1, 2)
        return cls(L[:, k:, :], L[0, :k, :k], dim, generator, second_layer, teacher, max_width)

    @classmethod
    def from_law(
        cls,
        p: int,
        k: int,
        d: int,
        replicas: int,
        generator: torch.Generator,
        student_init: str = "gaussian",
        teacher: TeacherSpec | None = None,
        max_width: int | None = None,
    ) -> OverlapChain:
        """Initial overlaps drawn from their exact law, without d-dimensional vectors.

        Teacher: 'orthonormal' C = √d I_k (P = I); 'gaussian': C = Bartlett factor of Wishart_k(d, I), rows rescaled
        to norm √d (one teacher shared by the replicas, as in the SGD engine). The student rows of a Gaussian
        matrix, in a basis whose first k vectors span the teacher, are A = [G | T]: G (p × k) standard normal, T
        (p × p) Bartlett's factor of the Wishart_p(d − k, I) Gram of the parts orthogonal to the teacher.
        'gaussian' init: each row of A rescaled to norm √d. 'orthonormal' init (rows orthonormal, scaled by √d):
        √d times the Haar-distributed frame A's rows span, Qᵀ from Aᵀ = Q R with diag R > 0 (the Gram–Schmidt of
        the Gaussian rows, which commutes with rotations; it is independent of the teacher). Needs p + k ≤ d.
        The generator draws the teacher (if Gaussian), G, then T, and goes on driving the chain.
        """
        teacher = teacher if teacher is not None else TeacherSpec()
        if student_init not in ("gaussian", "orthonormal") or teacher.init not in ("gaussian", "orthonormal"):
            raise ValueError(f"from_law: inits are 'gaussian' or 'orthonormal', got {student_init!r}, {teacher.init!r}")
        if p + k > d:
            raise ValueError(f"from_law: the chain needs p + k <= d, got p = {p}, k = {k}, d = {d}")
        root_d = math.sqrt(d)
        if teacher.init == "orthonormal":
            C = root_d * torch.eye(k, dtype=DTYPE, device=generator.device)
        else:
            C = bartlett_factor(d, k, 1, generator)[0]
            C = C * (root_d / C.norm(dim=1, keepdim=True))
        along = standard_normal((replicas, p, k), generator)
        orth = bartlett_factor(d - k, p, replicas, generator)
        A = torch.cat([along, orth], dim=2)
        if student_init == "gaussian":
            student = A * (root_d / A.norm(dim=2, keepdim=True))
        else:
            Q, R = torch.linalg.qr(A.transpose(1, 2))
            sign = torch.where(torch.diagonal(R, dim1=-2, dim2=-1) < 0, -1.0, 1.0).to(DTYPE)
            student = (Q * sign[:, None, :]).transpose(1, 2) * root_d
        return cls(student, C, d, generator, teacher=teacher, max_width=max_width)

    # -- state -------------------------------------------------------------------------------------------------

    @property
    def width(self) -> int:
        """m, the number of coordinates in use."""
        return self._width

    @property
    def student_coordinates(self) -> Tensor:
        """The student rows of F, a view (R, p, m) of the buffer."""
        return self._buffer[:, :, : self._width]

    @property
    def coordinates(self) -> Tensor:
        """F (R, n, m): the student rows, then the teacher rows [C | 0]; Ω = F Fᵀ/d. A new tensor."""
        teacher = torch.zeros(self.replicas, self.k, self._width, dtype=DTYPE, device=self.device)
        teacher[:, :, : self.k] = self.teacher_factor
        return torch.cat([self.student_coordinates, teacher], dim=1)

    def overlaps(self) -> tuple[Tensor, Tensor, Tensor]:
        """(Q (R, p, p), M (R, p, k), P (k, k)): the blocks W Wᵀ/d, W W*ᵀ/d, W* W*ᵀ/d of F Fᵀ/d."""
        Fs = self.student_coordinates
        Q = torch.bmm(Fs, Fs.transpose(1, 2)) / self.d
        M = torch.matmul(Fs[:, :, : self.k], self.teacher_factor.T) / self.d
        P = self.teacher_factor @ self.teacher_factor.T / self.d
        return Q, M, P

    def _set_student(self, student: Tensor) -> None:
        """Copy coordinates (R, p, m) into a buffer of max(max_width, m) columns, with the views a step uses."""
        width = student.shape[2]
        self.max_width = max(self.max_width, width)
        self._buffer = torch.zeros(self.replicas, self.p, self.max_width, dtype=DTYPE, device=self.device)
        self._buffer[:, :, :width] = student
        self._width = width
        # Views of the buffer made once: slicing costs a dispatch per call.
        self._views = [self._buffer[:, :, :m] for m in range(self.max_width + 1)]
        self._transposed = [view.transpose(1, 2) for view in self._views]
        # The fields F x/√d as (R, p, m) × (R, m, B) for many narrow replicas, else as (R, B, m) × (R, m, p): the
        # faster batched matmul of the two on the CPU (same numbers up to rounding; chosen from the shapes alone).
        self._rows_first = self.p <= 16 and self.replicas >= 8

    def share_second_layer(self, second_layer: Tensor) -> None:
        """Make ``second_layer`` (R, p, on the chain's device; float64 keeps the whole state in float64) the chain's
        second layer: its values become the chain's, and the readout steps go into it from now on. The student whose
        ``field_step`` drives the chain reads its own second layer, so it must be this tensor."""
        if second_layer.shape != self.second_layer.shape:
            raise ValueError(f"share_second_layer: needs shape {tuple(self.second_layer.shape)}")
        second_layer.copy_(self.second_layer)
        self.second_layer = second_layer

    def state_dict(self) -> dict:
        """Everything that determines the future of the chain: coordinates, second layer, generator state and the
        random numbers drawn ahead. The activation of the teacher and the rule are code, not state."""
        block = None
        if self._block is not None and not self._block.done:
            block = {k: v.clone() if isinstance(v, Tensor) else v for k, v in self._block.state().items()}
        return {
            "student": self.student_coordinates.clone(),
            "teacher_factor": self.teacher_factor.clone(),
            "teacher_readout": self.teacher_readout.clone(),
            "second_layer": self.second_layer.clone(),
            "d": self.d,
            "max_width": self.max_width,
            "steps": self.steps,
            "generator": self.generator.get_state(),
            "block": block,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict`: the chain then continues bit-exactly where that one was saved."""
        student = torch.as_tensor(state["student"], dtype=DTYPE, device=self.device)
        self.replicas, self.p = student.shape[:2]
        self.teacher_factor = torch.as_tensor(state["teacher_factor"], dtype=DTYPE, device=self.device).clone()
        self.k = self.teacher_factor.shape[0]
        self.teacher_readout = torch.as_tensor(state["teacher_readout"], dtype=DTYPE, device=self.device).clone()
        second_layer = torch.as_tensor(state["second_layer"], dtype=DTYPE, device=self.device)
        if second_layer.shape == self.second_layer.shape:
            self.second_layer.copy_(second_layer)  # in place: a shared second layer stays shared
        else:
            self.second_layer = second_layer.clone()
        self.d, self.max_width, self.steps = int(state["d"]), int(state["max_width"]), int(state["steps"])
        self._set_student(student)
        self.generator.set_state(state["generator"])
        block = state.get("block")
        if block is None:
            self._block = None
        else:
            moved = {k: v.to(self.device).clone() if isinstance(v, Tensor) else v for k, v in block.items()}
            self._block = _Block(**moved)

    # -- dynamics ----------------------------------------------------------------------------------------------

    def compress(self) -> None:
        """Replace the orthogonal part B (columns k…m) of the student coordinates by a lower-triangular L with
        L Lᵀ = B Bᵀ, so that F Fᵀ is unchanged up to rounding and m becomes at most k + p: the Cholesky factor of
        the p × p Gram B Bᵀ (backward stable for the Gram, which is all the chain's future depends on), or where a
        Gram is singular to working precision (dependent rows) the LQ of B (the QR of Bᵀ). The teacher columns are
        untouched. Discards the random numbers drawn ahead (their widths)."""
        self._block = None
        self._factor()

    def _factor(self) -> None:
        """The compression of :meth:`compress`, keeping the random numbers drawn ahead."""
        k, width = self.k, self._width
        if width <= k + self.p:
            return
        orthogonal = self._buffer[:, :, k:width]
        L, info = torch.linalg.cholesky_ex(torch.bmm(orthogonal, orthogonal.transpose(1, 2)))
        if bool(info.any()):
            packed, _ = torch.geqrf(orthogonal.transpose(1, 2))
            L = torch.triu(packed[:, : self.p, :]).transpose(1, 2)
        self._buffer[:, :, k:].zero_()
        self._buffer[:, :, k : k + L.shape[2]] = L
        self._width = k + L.shape[2]

    def _reserve(self, batch: int) -> None:
        """Make room for ``batch`` new columns: compress when they do not fit, widen the buffer if even the
        compressed coordinates leave no room (a batch larger than the slack). Refuses m + B > d."""
        if self._width + batch > min(self.max_width, self.d):
            self.compress()
        self.max_width = max(self.max_width, self._width + batch)
        if self.max_width != self._buffer.shape[2]:  # a batch wider than the slack, or max_width was changed
            self._set_student(self.student_coordinates.clone())
        if self._width + batch > self.d:
            raise ValueError(
                f"OverlapChain.step: needs m + B <= d, got m = {self._width} coordinates, B = {batch}, d = {self.d}"
            )

    def _orthogonal_lengths(self, widths: tuple[int, ...], batch: int) -> Tensor:
        """The diagonal of Bartlett's factor T_t of Wishart_B(d − m_t, I) for c steps at widths m_t, the Gram of the
        parts of the B inputs orthogonal to the m_t coordinates: √χ²(d − m_t − i), i = 0 … B − 1, as (c, R, B) (for
        B = 1, the length of the orthogonal part). Draws the c·R·B χ² variables in one call."""
        key = ("dofs", widths, batch, self.d)
        if key not in self._indices:
            dofs = [[self.d - m - i for i in range(batch)] for m in widths]
            dofs = torch.tensor(dofs, dtype=DTYPE, device=self.device)[:, None, :]
            self._indices[key] = dofs.expand(-1, self.replicas, -1)
        return _chi2(self._indices[key].contiguous(), self.generator).sqrt_()

    def _layout(self, widths: tuple[int, ...], batch: int) -> tuple[Tensor, Tensor, Tensor]:
        """Where the parts of T_t lie in a block's inputs: step after step, replica after replica, sample after
        sample, each sample x_b = [z_b (m_t) | T_t[b, :] (B)]; as flat positions, in that order, of the diagonal
        T_t[b, b], of the entries above it and of the first k entries of each z_b. Computed once per (widths, B):
        the cycles between compressions repeat."""
        key = (widths, batch)
        if key not in self._indices:
            R, B, offset = self.replicas, batch, 0
            diag_at, upper_at, k_at = [], [], []
            for m in widths:
                base = offset + torch.arange(R * B, dtype=torch.int64)[:, None] * (m + B)  # each sample's start
                b = torch.arange(B, dtype=torch.int64).repeat(R)[:, None]
                diag_at.append((base + m + b).view(-1))
                upper = torch.arange(B, dtype=torch.int64)
                upper_at.append((base + m + upper)[upper > b].view(-1))
                k_at.append((base + torch.arange(self.k, dtype=torch.int64)).view(-1))
                offset += R * B * (m + B)
            self._indices[key] = tuple(torch.cat(a).to(self.device) for a in (diag_at, upper_at, k_at))
        return self._indices[key]

    def _draw_block(self, batch: int, noise: float) -> _Block:
        """The random numbers of the steps of one or more compression cycles from the current width (fewer if they
        would exceed ``block_numbers``), drawn in their layout as inputs: one call of normals for all the entries of
        every x_t = [z_t | T_t] and the ξ_t (the entries of T_t below its diagonal are normals too, those on and
        above are then overwritten), then the χ² variables of the diagonals; and the teacher's output of every
        sample."""
        self._reserve(batch)
        R, k, B = self.replicas, self.k, batch
        limit = min(self.max_width, self.d)
        widths, count, start = [], 0, self._width
        for _ in range(self.block_cycles):  # the cycle from the current width, then cycles from k + p
            for m in range(start, limit - B + 1, B):
                cost = R * B * (m + B + 1)
                if widths and count + cost > self.block_numbers:
                    break
                widths.append(m)
                count += cost
            else:  # the whole cycle fits: the next one starts from the width after a compression
                start = k + self.p
                if start + B <= limit:
                    continue
            break
        widths = tuple(widths)
        c = len(widths)
        size = R * B * (sum(widths) + c * B)
        normals = standard_normal((size + c * R * B,), self.generator)
        inputs, xi = normals[:size], normals[size:].view(c, R, B)
        diag_at, upper_at, k_at = self._layout(widths, B)
        inputs.index_copy_(0, diag_at, self._orthogonal_lengths(widths, B).view(-1))
        if B > 1:
            inputs.index_fill_(0, upper_at, 0.0)
        inputs.mul_(1.0 / math.sqrt(self.d))
        # λ*_t = C z_t[:k]/√d for all steps at once
        teacher_fields = torch.matmul(inputs.index_select(0, k_at).view(c, R, B, k), self.teacher_factor.T)
        teacher_output = torch.matmul(self.teacher_activation(teacher_fields), self.teacher_readout).mul_(1.0 / k)
        return _Block(widths, B, self.d, inputs, xi, teacher_output, noise)

    def step(self, rule: FieldRule, lr: Tensor | float, noise: float = 0.0, batch: int = 1) -> None:
        """One SGD step of every replica, in coordinates. With m the width in use and B = ``batch``:

            z_b ~ N(0, I_m), ξ_b ~ N(0, 1), T Bartlett's factor of Wishart_B(d − m, I) (B = 1: T = √χ²(d − m))
            x_b = [z_b | T_b] (T_b the b-th row of T), fields λ_b = F x_b/√d (F's columns m … m + B − 1 are zero)
            y_b = (1/k) Σ_r a*_r σ*(λ*_br) + √Δ ξ_b,   (c, κ, s, Δa, κ_a) = rule(λ, y, γ)
            F' = s F + κ Σ_b c_b x_bᵀ,   a' = a + κ_a Δa

        that is F' = [S F + κ Σ_b c_b z_bᵀ | κ [c_1 … c_B] T] (THEORY.md §6). Only the student rows move.
        ``rule`` is a student's ``field_step`` (:class:`FieldRule`); ``lr`` is γ: a number (as the SGD engine passes
        it), a 0-d tensor or one per replica (R,); ``noise`` is the label-noise variance Δ. Needs m + B ≤ d
        (ValueError otherwise).
        """
        block = self._current_block(batch, noise)
        t = block.index
        width = self._width + batch
        inputs, transposed, labels = block.steps
        if self._rows_first:
            fields = torch.bmm(self._views[width], transposed[t]).transpose(1, 2)
        else:
            fields = torch.bmm(inputs[t], self._transposed[width])
        self._apply(rule(fields, labels[t], lr), inputs[t], width)
        self._width = width
        block.index = t + 1
        self.steps += 1

    def _current_block(self, batch: int, noise: float) -> _Block:
        """The block of random numbers the next step uses: the current one, or a new one (after a compression)."""
        block = self._block
        if block is not None and not block.done and block.batch == batch and block.d == self.d:
            if self._width != block.widths[block.index]:  # the start of the block's next cycle
                self._factor()
            if self._width == block.widths[block.index]:
                if block.noise != noise:
                    block.set_noise(noise)
                return block
        block = self._block = self._draw_block(batch, noise)
        return block

    def _apply(self, update: FieldStep, inputs: Tensor, width: int) -> None:
        """F' = s F + κ Σ_b c_b x_bᵀ on the first ``width`` columns (inputs x/√d (R, B, width)), a' = a + κ_a Δa."""
        student = self._views[width]
        coefficients = update.coefficients.transpose(1, 2)  # (R, p, B)
        scale, shrink = update.scale, update.shrink
        if isinstance(scale, Tensor) and scale.ndim:  # one learning rate per replica
            coefficients = coefficients * scale.reshape(-1, 1, 1)
            scale = 1.0
        if shrink is not None:
            student.mul_(shrink.reshape(-1, 1, 1) if isinstance(shrink, Tensor) and shrink.ndim else shrink)
        alpha = float(scale) * math.sqrt(self.d)  # the inputs are x/√d
        if inputs.shape[1] == 1:
            student.addcmul_(coefficients, inputs, value=alpha)
        else:
            student.baddbmm_(coefficients, inputs, alpha=alpha)
        if update.readout is not None:
            self.second_layer.add_(update.readout, alpha=update.readout_scale)

    def run(
        self,
        steps: int,
        rule: FieldRule,
        lrs: Tensor | list[float] | float,
        noise: float = 0.0,
        batch: int = 1,
        cycles: Callable | None = None,
    ) -> None:
        """``steps`` consecutive :meth:`step` calls with learning rates ``lrs``: one number, S numbers (S,), or one
        per replica and step (S, R). Random numbers are drawn in blocks that depend on the state alone, not on
        where a run starts or ends, so a chain split into several runs (or saved and resumed in between) gives the
        same result bit for bit.

        ``cycles`` (:class:`~phasesgd.sgd.compiled.CompiledCycles`, the caller's compile policy; B = 1 and rates
        (S,) only) runs every whole block of steps that starts inside this run as one compiled call, the same
        steps with the rounding of fused loops; the steps of a block cut by the run's end go one by one. So with
        ``cycles`` a split is bit-exact where the runs are the same (the chunks of a resumed training run)."""
        lrs = torch.as_tensor(lrs, dtype=DTYPE)
        if lrs.ndim == 0:
            lrs = lrs.expand(steps)
        if lrs.shape[0] != steps or lrs.ndim > 2:
            raise ValueError(f"run: {steps} steps need lrs of shape (S,) or (S, R), got {tuple(lrs.shape)}")
        # numbers, as the SGD engine passes them to field_step; one tensor (R,) per step for per-replica rates
        rates = lrs.tolist() if lrs.ndim == 1 else list(lrs.to(self.device).unbind(0))
        if cycles is not None and (batch != 1 or lrs.ndim != 1):
            cycles = None
        done = 0
        while done < steps:
            if cycles is not None:
                block = self._current_block(batch, noise)
                size = block.cycle_end.get(block.index, block.index) - block.index
                if size and done + size <= steps:
                    if self._run_cycle(cycles, rule, lrs[done : done + size].to(self.device), block):
                        done += size
                        continue
                    cycles = None  # compiling failed: step by step
            self.step(rule, rates[done], noise, batch)
            done += 1

    def _run_cycle(self, cycles: Callable, rule: FieldRule, rates: Tensor, block: _Block) -> bool:
        """The B = 1 steps of the block's compression cycle that starts now as one call of ``cycles`` (see
        :meth:`run`); False (and nothing done) where ``cycles`` gives None: it could not compile."""
        first, end = block.index, block.cycle_end[block.index]
        inputs = block.inputs[block.offsets[first] : block.offsets[end]]
        labels = block.labels[first:end]
        coordinates = cycles(rule, self._buffer, inputs, labels, rates, block.widths[first:end])
        if coordinates is None:
            return False
        self._buffer.copy_(coordinates)
        self._width = block.widths[end - 1] + 1
        block.index = end
        self.steps += end - first
        return True
