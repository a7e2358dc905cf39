"""benchmarks/gpu_check.sh, the check a session lent a GPU runs, kept from rotting: its dry run on the CPU
goes through every part's code, and its runner records a failing or hanging part and carries on."""

import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu_check.py"
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the check forks and reads /proc, as on the GPU machine")


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules["gpu_check"]


def test_dry_run_goes_through_every_part_on_the_cpu(tmp_path, gpu_check):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(SCRIPT.with_suffix(".sh")), "--dry-run", "--json", str(out)], env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    parts = json.loads(out.read_text())["parts"]
    assert list(parts) == [p.name for p in gpu_check.PARTS]
    skipped = {name for name, r in parts.items() if r["status"] == "skipped"}
    assert skipped == {"pipeline_auto", "pipeline_fp16", "paper_step_cudagraphs"}
    assert all(r["status"] == "ok" for name, r in parts.items() if name not in skipped)
    assert math.isfinite(parts["pipeline_off"]["psnr"]["evaluate"])
    for name in ("paper_step_eager", "paper_step_compiled"):
        assert parts[name]["steps_per_epoch"] == 2 and parts[name]["projected_search_minutes"] > 0
    assert parts["fused_float64"]["worst_share_of_tolerance"]["small"] < 1
    assert "exit 143" in parts["resume_sigterm"]["summary"]
    assert "paper_step_compiled" in done.stdout and "===== resume_sigterm" in (tmp_path / "gpu_check.log").read_text()


def dead(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except FileNotFoundError:
        return True


def test_a_failing_or_hanging_part_is_recorded_and_the_rest_still_run(tmp_path, gpu_check, monkeypatch):
    def fails(ctx):
        raise gpu_check.CheckFailed("wrong numbers")

    def exits(ctx):
        sys.exit(3)

    def hangs(ctx):
        child = subprocess.Popen(["sleep", "60"])
        (ctx.out_dir / "grandchild").write_text(str(child.pid))
        time.sleep(60)

    parts = [gpu_check.Part("fails", 30, fails), gpu_check.Part("exits", 30, exits), gpu_check.Part("hangs", 2, hangs),
             gpu_check.Part("works", 30, lambda ctx: {"summary": "fine"})]
    monkeypatch.setattr(gpu_check, "PARTS", parts)
    assert gpu_check.main(["--dry-run", "--json", str(tmp_path / "r.json")]) == 1
    parts = json.loads((tmp_path / "r.json").read_text())["parts"]
    assert list(parts) == ["fails", "exits", "hangs", "works"]
    assert parts["fails"]["status"] == "failed" and parts["fails"]["error"] == "CheckFailed: wrong numbers"
    assert parts["exits"]["status"] == "failed" and parts["exits"]["error"] == "SystemExit: 3"
    assert parts["hangs"]["status"] == "timeout" and parts["hangs"]["seconds"] < 10
    assert parts["works"] == {"status": "ok", "summary": "fine", "seconds": parts["works"]["seconds"],
                              "cpu_seconds": parts["works"]["cpu_seconds"]}
    grandchild = int((tmp_path / "grandchild").read_text())
    for _ in range(50):
        if dead(grandchild):
            break
        time.sleep(0.1)
    assert dead(grandchild)
