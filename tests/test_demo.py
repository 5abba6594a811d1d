"""`adamgen demo`: the README's main job, run for real (a short run) and made to fail when the
trained params leave the oracle's."""
from __future__ import annotations

import json
import subprocess

import pytest

from adamgen import demo


@pytest.mark.parametrize("target", ["jax", "cpu"])
def test_the_demo_trains_with_a_fresh_process_artifact_and_agrees_with_the_oracle(target, capsys):
    result = demo.run_demo(target, steps=40)
    assert result["losses"][-1] < 0.5 * result["losses"][0]
    assert result["max_param_diff"] <= demo.ORACLE_TOLERANCE
    if target == "cpu":  # no norm clipping in the demo's spec: the oracle's bits
        assert result["max_param_diff"] == 0
    assert "max |param - oracle param|" in capsys.readouterr().out


def test_the_demo_fails_when_the_params_leave_the_oracles(monkeypatch):
    losses = [1.0, 0.1]
    fake = json.dumps({"losses": losses, "oracle_losses": losses, "max_param_diff": 0.05, "median_step_ms": 0.1})
    monkeypatch.setattr(demo.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, fake + "\n", ""))
    with pytest.raises(SystemExit, match="left the oracle's by 0.05"):
        demo.run_demo("jax", steps=2)
