"""tools/gpu_check.py (`make gpu-check`): the parts that run without a GPU. Its full --dry-run
(every step on the CPU with stand-ins, minutes) is run by hand, not here."""

import importlib.metadata
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

TOOL = Path(__file__).resolve().parents[1] / "tools" / "gpu_check.py"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("gpu_check_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")
def test_without_a_gpu_it_stops_at_once(tool, tmp_path, capsys):
    assert tool.main(["--work", str(tmp_path)]) == 2
    assert "no NVIDIA GPU" in capsys.readouterr().err
    assert not (tmp_path / "results.json").exists()


def test_only_the_missing_pins_are_installed_and_never_torch(tool, tmp_path):
    have = importlib.metadata.version("pytest")
    lock = tmp_path / "lock.txt"
    lock.write_text(f"# comment\ntorch==0.0.1\nbpy==0.0.1\npytest=={have}\nno-such-pkg==1.0\n")
    assert tool.missing_from_lock(lock) == ["no-such-pkg==1.0"]


def test_every_step_has_a_limit_and_the_plan_fits_the_window(tool):
    for dry in (False, True):
        plan = tool.steps(dry, None)
        names = [s.name for s in plan]
        assert names[:4] == ["env", "install", "gsplat build", "cuda tests"]
        assert {"8 GB tier", "12 GB tier", "sds_step full-size"} <= set(names)
        assert all(0 < s.limit_s <= tool.TOTAL_BUDGET_S for s in plan)
    real = {s.name: s.argv for s in tool.steps(False, None)}
    assert "--cap-gib" in real["8 GB tier"] and "--memory-tier" in real["12 GB tier"]


def test_results_table_keeps_each_steps_figures(tool):
    out = 'x\nGPU_CHECK_RESULT {"seconds": 1.5}\n| a | b |\n|---|---|\n| 1 | 2 |\n'
    figs = tool._figures(out)
    assert figs["seconds"] == 1.5 and figs["table"] == ["| a | b |", "|---|---|", "| 1 | 2 |"]
    r = tool.Result("sds_step full-size", "ok", 2.0, figs)
    md = tool.markdown([r], "GPU X", False, tool.steps(False, None))
    assert "GPU X" in md and "| sds_step full-size | ok | 2.0 | seconds 1.5 |" in md
    assert "## sds_step full-size" in md and "| 1 | 2 |" in md
