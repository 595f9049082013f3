"""The default experiment (blue line, d = 1000) against an independent plain-numpy SGD loop."""

from __future__ import annotations

import math

import numpy as np
from conftest import QUIET
from scipy.special import erf

from phasesgd.app.train import train

D, K, P, GAMMA0, NOISE, T_MAX, R = 1000, 4, 8, 8.0, 1e-3, 100.0, 8
CHECK_TIMES = (0.0, 1.0, 10.0, 30.0, 100.0)


def erf_risk(Q: np.ndarray, M: np.ndarray, Pm: np.ndarray) -> np.ndarray:
    """R = ½[ΣI2(t,t)/k² + ΣI2(s,s)/p² − 2ΣI2(s,t)/(pk)], I2 = (2/π) arcsin(C_ab/√((1+C_aa)(1+C_bb)))."""

    def i2(C, da, db):
        return 2 / math.pi * np.arcsin(C / np.sqrt((1 + da)[..., :, None] * (1 + db)[..., None, :]))

    qd, pd = np.diagonal(Q, axis1=-2, axis2=-1), np.diagonal(Pm)
    tt = i2(Pm, pd, pd).sum() / K**2
    ss = i2(Q, qd, qd).sum((-1, -2)) / P**2
    st = i2(M, qd, np.broadcast_to(pd, qd.shape[:-1] + (K,))).sum((-1, -2)) / (P * K)
    return 0.5 * (tt + ss - 2 * st)


def numpy_sgd(seed: int) -> dict[float, np.ndarray]:
    """R replicas of online SGD written from docs/theory.md §1 with numpy alone."""
    rng = np.random.default_rng(seed)
    w_star = np.linalg.qr(rng.standard_normal((D, K)))[0].T * math.sqrt(D)
    w = rng.standard_normal((R, P, D))
    w *= math.sqrt(D) / np.linalg.norm(w, axis=-1, keepdims=True)
    Pm = w_star @ w_star.T / D
    risks = {}
    steps = {round(t * D): t for t in CHECK_TIMES}
    block = 1000
    for start in range(0, int(T_MAX * D) + 1, block):
        x_block = rng.standard_normal((block, R, D))
        label_noise = math.sqrt(NOISE) * rng.standard_normal((block, R))
        y_block = erf(x_block @ w_star.T / math.sqrt(2 * D)).mean(-1) + label_noise
        for i in range(block):
            nu = start + i
            if nu in steps:
                Q = np.einsum("rjd,rld->rjl", w, w) / D
                M = np.einsum("rjd,kd->rjk", w, w_star) / D
                risks[steps[nu]] = erf_risk(Q, M, Pm)
            if nu == int(T_MAX * D):
                break
            x = x_block[i]
            lam = np.matmul(w, x[:, :, None])[..., 0] / math.sqrt(D)
            err = y_block[i] - erf(lam / math.sqrt(2)).mean(-1)
            coeff = (GAMMA0 / P / math.sqrt(D)) * err[:, None] * math.sqrt(2 / math.pi) * np.exp(-(lam**2) / 2)
            w += coeff[:, :, None] * x[:, None, :]
    return risks


def test_default_experiment_learns_and_agrees_with_plain_numpy_sgd(make_config):
    module = train(make_config(*QUIET, f"replicas={R}", "callbacks.order_parameters=null"))
    assert (module.dim, module.student.width, module.teacher.width) == (D, P, K)
    t, risk = module.times(), np.stack(module.history.risk, axis=1)  # (R, T)
    reference = numpy_sgd(seed=123)
    for t_check, ref in reference.items():
        ours = risk[:, np.argmin(np.abs(t - t_check))]
        se = math.sqrt(ours.var(ddof=1) / R + ref.var(ddof=1) / R)
        # Ensemble means agree within 4 joint standard errors (plus 2 % for t-grid rounding).
        assert abs(ours.mean() - ref.mean()) < 4 * se + 0.02 * ref.mean(), (t_check, ours.mean(), ref.mean(), se)
    # The risk starts near 0.06 and falls by more than an order of magnitude by t = 100.
    assert 0.04 < risk[:, 0].mean() < 0.08
    assert risk[:, -1].mean() < risk[:, 0].mean() / 10
