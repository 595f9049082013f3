"""The two engines behind one run: ``engine=chain`` (the exact overlap chain) against
``engine=sgd`` through the whole training module, the choice of ``engine=auto``, exact resume,
memory at d = 10⁹, and the refusals. The chain's own law tests, with their negative controls,
are in tests/test_chain.py; here the same kind of test runs on what train.py runs."""

from __future__ import annotations

import signal
import sys

import numpy as np
import pytest
import torch
from conftest import QUIET
from scipy.stats import ks_2samp
from students import USER_MODULE

from phasesgd.app.build import build_module, build_trainer
from phasesgd.app.train import train
from phasesgd.infra.validation import ConfigError
from phasesgd.sgd.engines import Chain, WeightSpace, choose_engine

SMALL = [*QUIET, "callbacks.order_parameters=null", "callbacks.ode=null", "skip_finished=false"]
# A small plateau-line run: k = 1, p = 2, erf, γ0 = 2, Δ = 0.01, t = ν/d up to 2.
LAW = [*SMALL, "teacher.width=1", "student.width=2", "lr.gamma0=2", "teacher.noise=0.01", "t_max=2"]
ALPHA = 1e-3 / 8  # per comparison: four statistics of two tests


def _final(module):
    """Q_11, Q_12, M_11 and the risk of every replica at the end."""
    Q, M = module.history.Q[-1], module.history.M[-1]
    return {"Q11": Q[:, 0, 0], "Q12": Q[:, 0, 1], "M11": M[:, 0, 0], "risk": module.history.risk[-1]}


def _law(make_config, tmp_path, d, replicas):
    sgd = train(make_config(*LAW, f"d={d}", f"replicas={replicas}", "seed=1", output_dir=tmp_path / "sgd"))
    chain = train(
        make_config(*LAW, f"d={d}", f"replicas={replicas}", "seed=2", "engine=chain", output_dir=tmp_path / "c")
    )
    assert isinstance(chain.engine, Chain) and isinstance(sgd.engine, WeightSpace)
    a, b = _final(sgd), _final(chain)
    return {key: (ks_2samp(a[key], b[key]).pvalue, b[key].std() / a[key].std()) for key in a}


def test_the_chain_engine_has_sgds_law_through_the_module(make_config, tmp_path, monkeypatch):
    """d = 30, 1500 replicas each, independent seeds: KS on Q_11, Q_12, M_11 and the risk at
    t = 2; spreads within 15 %. Negative control: the same test rejects a chain whose step uses
    a d off by 25 % (its inputs' projections and χ² lengths drawn at 1.25 d)."""
    same = _law(make_config, tmp_path / "same", 30, 1500)
    assert min(p for p, _ in same.values()) > ALPHA, same
    assert all(0.85 < ratio < 1.15 for _, ratio in same.values()), same
    bind = Chain.bind

    def wrong_d(self, seed, device):
        bind(self, seed, device)
        self.chain.d = round(1.25 * self.chain.d)

    monkeypatch.setattr(Chain, "bind", wrong_d)
    other = _law(make_config, tmp_path / "other", 30, 1500)
    assert min(p for p, _ in other.values()) < 1e-6, other


def test_the_chain_starts_from_the_sgd_engines_overlaps(make_config, tmp_path):
    """At small d the chain starts from the drawn weights: Ω(0) equals the SGD engine's."""
    sgd = build_module(make_config(*SMALL, "d=50", "replicas=3", output_dir=tmp_path / "a"))
    chain = build_module(make_config(*SMALL, "d=50", "replicas=3", "engine=chain", output_dir=tmp_path / "b"))
    chain.engine.bind(chain.seed, torch.device("cpu"))
    for name in ("Q", "M", "P"):
        np.testing.assert_allclose(
            getattr(chain.overlaps(), name).numpy(), getattr(sgd.overlaps(), name).numpy(), rtol=0, atol=1e-6
        )


def test_auto_picks_the_cheaper_engine_and_records_it(make_config, tmp_path, caplog):
    assert choose_engine("auto", 8, 4, 10) == "sgd" and choose_engine("auto", 8, 4, 10**5) == "chain"
    small = build_module(make_config(*SMALL, "d=20", "engine=auto", output_dir=tmp_path / "a"))
    with caplog.at_level("INFO"):
        large = build_module(make_config(*SMALL, "d=100000", "engine=auto", output_dir=tmp_path / "b"))
    assert isinstance(small.engine, WeightSpace) and isinstance(large.engine, Chain)
    assert "engine=auto: chain" in caplog.text
    assert small.run_config["engine"]["name"] == "sgd" and large.run_config["engine"]["name"] == "chain"


def test_the_chain_runs_at_a_billion_dimensions_without_d_dimensional_tensors(make_config, tmp_path):
    """d = 10⁹, 2 replicas, 2000 steps: no tensor of the module is larger than the chain's
    coordinates, Ω stays positive semidefinite, and the risk is finite."""
    cfg = make_config(
        *SMALL, "d=1000000000", "replicas=2", "t_max=2e-6", "measure.t_min=1e-7", "engine=chain", output_dir=tmp_path
    )
    module = train(cfg)
    chain = module.engine.chain
    assert module.sgd_steps == 2000 and chain.d == 10**9
    assert max(t.numel() for t in module.state_dict().values()) <= chain.student_coordinates.numel()
    omega = chain.coordinates @ chain.coordinates.transpose(1, 2) / chain.d
    assert float(torch.linalg.eigvalsh(omega).min()) > -1e-12 and np.isfinite(module.history.risk[-1]).all()


def test_resume_after_ctrl_c_inside_a_chunk_is_exact_on_the_chain(make_config, tmp_path):
    overrides = [*SMALL, "d=80", "replicas=3", "t_max=3", "engine=chain", "data.chunk_steps=32"]
    full = train(make_config(*overrides, output_dir=tmp_path / "full"))
    cfg = make_config(*overrides, output_dir=tmp_path / "cut")
    module, trainer = build_module(cfg), build_trainer(cfg)
    step, calls = module.student.field_step, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 100:  # inside the fourth chunk
            raise KeyboardInterrupt
        return step(*args)

    module.student.field_step = interrupted
    try:
        with pytest.raises(SystemExit):
            trainer.fit(module)
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    ckpt = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=True)["phasesgd"]
    assert 0 < saved["sgd_steps"] < full.sgd_steps and "chain" in saved
    resumed = train(make_config(*overrides, f"resume={ckpt}", output_dir=tmp_path / "cut"))
    np.testing.assert_array_equal(np.stack(resumed.history.risk, 1), np.stack(full.history.risk, 1))
    np.testing.assert_array_equal(resumed.history.Q[-1], full.history.Q[-1])


def test_a_field_space_student_runs_on_the_chain_and_a_weight_space_one_is_refused(make_config, tmp_path, monkeypatch):
    (tmp_path / "engine_students.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    base = [*SMALL, "d=60", "t_max=1", "replicas=2", "engine=chain"]
    clipped = train(make_config(*base, "student._target_=engine_students.ClippedStudent", "+student.clip=1e-3"))
    plain = train(make_config(*base, output_dir=tmp_path / "plain"))
    assert clipped.history.risk[-1].mean() > plain.history.risk[-1].mean()  # clipping slows learning
    with pytest.raises(
        ConfigError, match=r"WeightSpaceClippedStudent defines its step in weight space only.*field_step"
    ):
        build_module(make_config(*base, "student._target_=engine_students.WeightSpaceClippedStudent"))
    sys.modules.pop("engine_students", None)


def test_the_chain_refuses_the_test_set_estimator_and_a_too_small_d(make_config):
    with pytest.raises(ConfigError, match="measure.risk_estimator=test_set needs input vectors"):
        build_module(make_config(*SMALL, "d=100", "engine=chain", "measure.risk_estimator=test_set"))
    with pytest.raises(ConfigError, match=r"engine=chain needs p \+ k \+ data.batch_size <= d"):
        build_module(make_config(*SMALL, "d=12", "engine=chain"))
