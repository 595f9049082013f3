"""The exact overlap chain: SGD's law of the order parameters without d-dimensional vectors (THEORY.md §6).

The n = p + k rows V = [W; W*] (student rows first, then teacher rows) are written as V = F Uᵀ with U (d × m)
orthonormal columns and F (n × m) the coordinates, so that Ω = V Vᵀ/d = F Fᵀ/d. A fresh input splits as
x = U z + (orthogonal part), z ~ N(0, I_m), and the fields are (λ, λ*) = V x/√d = F z/√d. Every update of the form

    w_j ← s_j w_j + Σ_b g_bj x_b/√d          (s, g functions of the fields and the label noise only)

moves the coordinates to F' = [S F + (1/√d) Σ_b g_b z_bᵀ | (1/√d) G T], with G = [g_1 … g_B] (n × B, zero on the
teacher rows) and T lower triangular, T Tᵀ ~ Wishart_B(d − m, I) the Gram of the orthogonal parts of the B inputs
(Bartlett). The chain of Ω has exactly SGD's law at every step and every d; U is never needed and nothing of size d
is allocated.

One definition of the update serves every engine: a :class:`FieldRule` maps the fields of a step to a
:class:`FieldStep` (gains g, shrink factors s, readout increments Δa). :func:`weight_space_step` applies it to
d-dimensional weights (plain SGD), :class:`OverlapChain` to the coordinates.

Internally the basis is chosen so that the teacher rows are [C | 0] with C (k × k) lower triangular and the same
for all replicas (the teacher never moves: s = 1, g = 0 on its rows), so only the p student rows are stored and
updated; :attr:`OverlapChain.coordinates` assembles the full F (R, n, m).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

__all__ = [
    "FieldRule",
    "FieldStep",
    "OverlapChain",
    "TeacherSpec",
    "bartlett_factor",
    "committee_rule",
    "erf_activation",
    "erf_derivative",
    "relu",
    "relu_derivative",
    "standard_normal",
    "weight_space_step",
]

DTYPE = torch.float64

_SQRT_HALF = math.sqrt(0.5)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
# Below this many numbers torch.randn (one kernel call) beats the few calls of Box–Muller; above, Box–Muller on
# float64 uniforms is cheaper per number on the CPU than torch's scalar float64 normal sampler.
_BOX_MULLER_MIN = 4096


class Activation(Protocol):
    """An elementwise torch function, σ or σ'."""

    def __call__(self, x: Tensor, /) -> Tensor: ...


def erf_activation(x: Tensor) -> Tensor:
    """σ(x) = erf(x/√2), the project's default activation."""
    return torch.erf(x * _SQRT_HALF)


def erf_derivative(x: Tensor) -> Tensor:
    """σ'(x) = √(2/π) exp(−x²/2) for σ(x) = erf(x/√2)."""
    return torch.exp(x * x * -0.5).mul_(_SQRT_2_OVER_PI)


def relu(x: Tensor) -> Tensor:
    """σ(x) = max(x, 0)."""
    return torch.clamp_min(x, 0.0)


def relu_derivative(x: Tensor) -> Tensor:
    """σ'(x) = 1[x > 0]."""
    return (x > 0).to(x.dtype)


# ---------------------------------------------------------------------------------------------------------------
# Field-space rules
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldStep:
    """One step of a first layer written in field space, for R replicas and B samples:

        w_j ← s_j w_j + Σ_b g_bj x_b/√d,        a_j ← a_j + Δa_j.

    gain: g, shape (R, B, p); the 1/B of a mini-batch average and the γ/p are inside g.
    shrink: s, shape (R, p) or broadcastable to it (weight decay); None means s = 1.
    readout: Δa, shape (R, p); None means the second layer is fixed.
    """

    gain: Tensor
    shrink: Tensor | None = None
    readout: Tensor | None = None


class FieldRule(Protocol):
    """fields λ (R, B, p), teacher_fields λ* (R, B, k), labels y (R, B), second_layer a (R, p) and the learning
    rate γ (a 0-d tensor or one per replica, (R,)) → the :class:`FieldStep` of this step. A rule must not write
    into its inputs (the chain passes views of its state and of random numbers drawn ahead)."""

    def __call__(
        self, fields: Tensor, teacher_fields: Tensor, labels: Tensor, second_layer: Tensor, lr: Tensor
    ) -> FieldStep: ...


def _per_replica(lr: Tensor, ndim: int) -> Tensor:
    """γ as a 0-d tensor, or (R,) reshaped to (R, 1, …) with ``ndim`` axes, to broadcast against (R, …)."""
    return lr if lr.ndim == 0 else lr.reshape(lr.shape[0], *([1] * (ndim - 1)))


def committee_rule(
    activation: Activation,
    derivative: Activation,
    p: int,
    d: int,
    weight_decay: float = 0.0,
    second_layer_lr: float | None = None,
) -> FieldRule:
    """The committee student's SGD step on ℓ = ½(y − f)², f = (1/p) Σ_j a_j σ(λ_j), averaged over B samples:

        w_j ← (1 − γ λ_wd/(p d)) w_j + (γ/(p B)) Σ_b a_j e_b σ'(λ_bj) x_b/√d,    e_b = y_b − f(x_b),

    so g_bj = (γ/(p B)) a_j e_b σ'(λ_bj) and s_j = 1 − γ λ_wd/(p d). With ``second_layer_lr`` γ_a0 the readout is
    trained too, from the fields before W moves: Δa_j = (γ_a0/(d p B)) Σ_b e_b σ(λ_bj).

    ``activation`` and ``derivative`` are elementwise torch callables (σ and σ').
    """
    p, d, weight_decay = int(p), int(d), float(weight_decay)

    def rule(fields: Tensor, teacher_fields: Tensor, labels: Tensor, second_layer: Tensor, lr: Tensor) -> FieldStep:
        batch = fields.shape[1]
        act = activation(fields)
        # e = y − (1/p) Σ_j a_j σ(λ_j), as (R, B, 1)
        err = torch.baddbmm(labels[..., None], act, second_layer[:, :, None], alpha=-1.0 / p)
        a = second_layer[:, None, :]
        gain = derivative(fields) * a
        gain.mul_(err * (_per_replica(lr, 3) * (1.0 / (p * batch))))
        shrink = None
        if weight_decay:
            shrink = 1.0 - _per_replica(lr, 2) * (weight_decay / (p * d))
        readout = None
        if second_layer_lr is not None:
            readout = torch.bmm(err.transpose(1, 2), act)[:, 0, :].mul_(float(second_layer_lr) / (d * p * batch))
        return FieldStep(gain, shrink, readout)

    return rule


def _shrink_rows(shrink: Tensor) -> Tensor:
    """s (R, p) or broadcastable → a factor broadcasting over the rows of (R, p, ·)."""
    return shrink if shrink.ndim == 0 else shrink[..., None]


def weight_space_step(
    W: Tensor,
    x: Tensor,
    labels: Tensor,
    second_layer: Tensor,
    rule: FieldRule,
    lr: Tensor | float,
    teacher_fields: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """One step of plain SGD on d-dimensional weights driven by a field-space rule:

        λ = x Wᵀ/√d,  (g, s, Δa) = rule(λ, λ*, y, a, γ),  W' = S W + gᵀ x/√d,  a' = a + Δa.

    W (R, p, d), x (R, B, d), labels (R, B), second_layer (R, p); teacher_fields (R, B, k) for rules that read
    them (None passes an empty (R, B, 0) tensor). Returns new tensors (W', a'); the inputs are left as they are.
    """
    d = W.shape[-1]
    root_d = math.sqrt(d)
    fields = torch.bmm(x, W.transpose(1, 2)) / root_d
    if teacher_fields is None:
        teacher_fields = fields.new_zeros(fields.shape[:2] + (0,))
    lr = torch.as_tensor(lr, dtype=W.dtype, device=W.device)
    step = rule(fields, teacher_fields, labels, second_layer, lr)
    new_W = W if step.shrink is None else W * _shrink_rows(step.shrink)
    new_W = new_W + torch.bmm(step.gain.transpose(1, 2), x) / root_d
    new_a = second_layer if step.readout is None else second_layer + step.readout
    return new_W, new_a


# ---------------------------------------------------------------------------------------------------------------
# Random numbers
# ---------------------------------------------------------------------------------------------------------------


def standard_normal(shape: tuple[int, ...] | list[int], generator: torch.Generator) -> Tensor:
    """Independent N(0, 1) numbers, float64, on the generator's device.

    On the CPU, for many numbers, Box–Muller on float64 uniforms u ∈ [0, 1): √(−2 ln(1 − u₁)) (cos, sin)(2π u₂);
    otherwise torch.randn. Both are exact in law (up to float64 rounding)."""
    shape = tuple(int(s) for s in shape)
    count = math.prod(shape)
    device = generator.device
    if device.type != "cpu" or count < _BOX_MULLER_MIN:
        return torch.randn(shape, generator=generator, dtype=DTYPE, device=device)
    half = (count + 1) // 2
    u = torch.rand(2, half, generator=generator, dtype=DTYPE, device=device)
    radius = torch.log1p(u[0].neg_()).mul_(-2.0).sqrt_()
    angle = u[1].mul_(2.0 * math.pi)
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
    """The teacher committee f*(x) = (1/k) Σ_r a*_r σ*(λ*_r): σ* (``activation``), a* (``readout``, None: all ones)
    and, for :meth:`OverlapChain.from_law`, its rows' law: 'orthonormal' (P = I) or 'gaussian' (Gaussian rows
    rescaled to norm √d)."""

    activation: Activation = erf_activation
    readout: tuple[float, ...] | list[float] | Tensor | None = None
    init: str = "orthonormal"


def _positive_diagonal(R: Tensor) -> Tensor:
    """Flip the rows of upper-triangular R factors (…, r, c) so that their diagonal is ≥ 0 (the unique QR)."""
    diag = torch.diagonal(R, dim1=-2, dim2=-1)
    sign = torch.where(diag < 0, -1.0, 1.0).to(R.dtype)
    return R * sign[..., None]


class _Block:
    """The random numbers of a run of c steps at known widths m_0, m_0 + B, …, drawn ahead in two calls (the normals
    of all c steps, then their χ² variables), and what follows from them alone: for step t, z_t/√d (R, B, m_t), ξ_t,
    the teacher fields λ*_t = C z_t[:k]/√d, the teacher's output f*(λ*_t) and T_t/√d (Bartlett, (R, B, B))."""

    FIELDS = ("widths", "batch", "d", "z", "xi", "teacher_fields", "teacher_output", "orthogonal", "index")

    def __init__(self, widths, batch, d, z, xi, teacher_fields, teacher_output, orthogonal, index=0) -> None:
        self.widths, self.batch, self.d, self.index = tuple(int(m) for m in widths), int(batch), int(d), int(index)
        self.z, self.xi, self.orthogonal = z, xi, orthogonal
        self.teacher_fields, self.teacher_output = teacher_fields, teacher_output
        offsets = [0]
        for m in self.widths:
            offsets.append(offsets[-1] + batch * m)
        R = z.shape[0]
        # Views made once per block: indexing costs a dispatch per call, the same order of time as a small step.
        self.z_steps = [z[:, o : o + batch * m].view(R, batch, m) for o, m in zip(offsets, self.widths)]
        self.xi_steps = list(xi.unbind(1))
        self.teacher_field_steps = list(teacher_fields.unbind(1))
        self.teacher_output_steps = list(teacher_output.unbind(1))
        self.orthogonal_steps = list(orthogonal.unbind(1))

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
    in place, and when the next step would not fit, :meth:`compress` replaces the orthogonal part (columns k…m) by
    the p × p triangular factor of its LQ, which leaves F Fᵀ unchanged.

    Random numbers are drawn ahead, for all the steps up to the next compression (at most about
    ``block_numbers`` numbers at a time): they do not depend on the state, so this is the law of step-by-step
    draws, and it takes the per-step cost of drawing and of the teacher's side out of the step. The block is part
    of the state; changing the batch size or d discards what is left of it.
    """

    #: Upper bound on the normals drawn ahead in one block (memory: 8 bytes each).
    block_numbers: int = 2**21

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
        return cls(student, C, d, generator, teacher=teacher)

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
        self._columns = [self._buffer[:, :, m : m + 1] for m in range(self.max_width)]

    def state_dict(self) -> dict:
        """Everything that determines the future of the chain: coordinates, second layer, generator state and the
        random numbers drawn ahead. The activations of the teacher and of the rule are code, not state."""
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
        self.second_layer = torch.as_tensor(state["second_layer"], dtype=DTYPE, device=self.device).clone()
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
        """Replace the orthogonal part B (columns k…m) of the student coordinates by the lower-triangular factor of
        its LQ, B = L Q (the QR of Bᵀ): L Lᵀ = B Bᵀ, so F Fᵀ is unchanged up to rounding, and m becomes at most
        k + p. The teacher columns are untouched. Discards the random numbers drawn ahead (their widths)."""
        k, width = self.k, self._width
        self._block = None
        if width <= k + self.p:
            return
        packed, _ = torch.geqrf(self._buffer[:, :, k:width].transpose(1, 2))
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

    def _orthogonal_factors(self, off: Tensor, widths: list[int], batch: int) -> Tensor:
        """T (R, c, B, B) for c steps at widths m_t: lower triangular, T_t T_tᵀ ~ Wishart_B(d − m_t, I), the Gram of
        the parts of the B inputs orthogonal to the m_t coordinates (Bartlett: diagonal √χ²(d − m_t − i), below it
        the normals ``off`` (R, c, B(B − 1)/2)). Draws the c·B χ² variables of every replica in one call."""
        R, c = off.shape[0], len(widths)
        dofs = self.d - torch.tensor(widths, dtype=DTYPE, device=self.device)[:, None]
        dofs = dofs - torch.arange(batch, dtype=DTYPE, device=self.device)
        diag = _chi2(dofs.expand(R, c, batch).contiguous(), self.generator).sqrt_()
        if batch == 1:
            return diag[..., None]
        T = torch.diag_embed(diag)
        rows, cols = torch.tril_indices(batch, batch, -1, device=self.device)
        T[:, :, rows, cols] = off
        return T

    def _draw_block(self, batch: int) -> _Block:
        """The random numbers of the steps from the current width up to the next compression (fewer if they would
        exceed ``block_numbers``): normals z, ξ and Bartlett's off-diagonals of all steps, then the χ² variables."""
        self._reserve(batch)
        R, k, B, m0 = self.replicas, self.k, batch, self._width
        limit = min(self.max_width, self.d)
        widths, count = [], 0
        for m in range(m0, limit - B + 1, B):
            cost = R * B * (m + 1)
            if widths and count + cost > self.block_numbers:
                break
            widths.append(m)
            count += cost
        c, nz, noff = len(widths), B * sum(widths), B * (B - 1) // 2
        normals = standard_normal((R, nz + c * B + c * noff), self.generator)
        z = normals[:, :nz].mul_(1.0 / math.sqrt(self.d))
        xi = normals[:, nz : nz + c * B].view(R, c, B)
        off = normals[:, nz + c * B :].view(R, c, noff)
        orthogonal = self._orthogonal_factors(off, widths, B).mul_(1.0 / math.sqrt(self.d))
        # λ*_t = C z_t[:k]/√d for all steps at once: gather the first k coordinates of every sample
        w = torch.tensor(widths, device=self.device)
        offsets = (torch.cumsum(w, 0) - w) * B  # where step t's B·m_t numbers start
        sample = torch.arange(B, device=self.device)[None, :, None] * w[:, None, None]
        index = (offsets[:, None, None] + sample + torch.arange(k, device=self.device)).reshape(-1)
        teacher_fields = torch.matmul(z.index_select(1, index).view(R, c, B, k), self.teacher_factor.T)
        teacher_output = torch.matmul(self.teacher.activation(teacher_fields), self.teacher_readout).mul_(1.0 / k)
        return _Block(widths, B, self.d, z, xi, teacher_fields, teacher_output, orthogonal)

    def step(self, rule: FieldRule, lr: Tensor | float, noise: float = 0.0, batch: int = 1) -> None:
        """One SGD step of every replica, in coordinates. With m the width in use and B = ``batch``:

            z_b ~ N(0, I_m), ξ_b ~ N(0, 1)
            (λ_b, λ*_b) = F z_b/√d,   y_b = (1/k) Σ_r a*_r σ*(λ*_br) + √Δ ξ_b
            (g, s, Δa) = rule(λ, λ*, y, a, γ)
            F' = [S F + (1/√d) Σ_b g_b z_bᵀ | (1/√d) G T],   a' = a + Δa

        with G = [g_1 … g_B] (p × B) and T the Bartlett factor of Wishart_B(d − m, I) (for B = 1, T = √χ²(d − m)).
        Only the student rows move. ``lr`` is γ: a number, a 0-d tensor or one per replica (R,); ``noise`` is the
        label-noise variance Δ. Needs m + B ≤ d (ValueError otherwise).
        """
        block = self._block
        if block is None or block.done or block.batch != batch or block.d != self.d:
            block = self._block = self._draw_block(batch)
        t, m = block.index, self._width
        z = block.z_steps[t]
        fields = torch.matmul(z, self._transposed[m])
        labels = block.teacher_output_steps[t]
        if noise:
            labels = torch.add(labels, block.xi_steps[t], alpha=math.sqrt(noise))
        if not isinstance(lr, Tensor):
            lr = torch.tensor(float(lr), dtype=DTYPE, device=self.device)
        update = rule(fields, block.teacher_field_steps[t], labels, self.second_layer, lr)
        student = self._views[m]
        if update.shrink is not None:
            student.mul_(_shrink_rows(update.shrink))
        gain_t = update.gain.transpose(1, 2)  # G, (R, p, B)
        if batch == 1:
            student.addcmul_(gain_t, z)
            torch.mul(gain_t, block.orthogonal_steps[t], out=self._columns[m])
        else:
            student.add_(torch.bmm(gain_t, z))
            self._buffer[:, :, m : m + batch] = torch.bmm(gain_t, block.orthogonal_steps[t])
        self._width = m + batch
        block.index = t + 1
        if update.readout is not None:
            self.second_layer.add_(update.readout)
        self.steps += 1

    def run(
        self, steps: int, rule: FieldRule, lrs: Tensor | list[float] | float, noise: float = 0.0, batch: int = 1
    ) -> None:
        """``steps`` consecutive :meth:`step` calls with learning rates ``lrs``: one number, S numbers (S,), or one
        per replica and step (S, R). Random numbers are drawn in blocks that depend on the state alone, not on
        where a run starts or ends, so a chain split into several runs (or saved and resumed in between) gives the
        same result bit for bit."""
        lrs = torch.as_tensor(lrs, dtype=DTYPE, device=self.device)
        if lrs.ndim == 0:
            lrs = lrs.expand(steps)
        if lrs.shape[0] != steps or lrs.ndim > 2:
            raise ValueError(f"run: {steps} steps need lrs of shape (S,) or (S, R), got {tuple(lrs.shape)}")
        for lr in lrs.unbind(0):
            self.step(rule, lr, noise, batch)
