"""The build guard: a killed build never wedges later builds (issue 12 item 0).

Other processes play the earlier builders: one that holds the guard while alive, one SIGKILLed
midway (leaving torch's ``<build_dir>/lock`` behind, as a killed ``cpp_extension.load`` does).
"""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from stabledreamer.render.build_guard import BuildLockTimeout, build_guard, guarded_build

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="uses SIGKILL and POSIX locks")

_SRC = str(Path(__file__).resolve().parents[1] / "backend")

# A builder in another process: takes the guard, leaves a torch lock file as a build in progress
# does, says "held" and sleeps for argv[2] seconds (then exits normally, releasing the guard).
_HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from stabledreamer.render.build_guard import build_guard
    build_dir = Path(sys.argv[1])
    with build_guard(build_dir, 5.0, "holder"):
        build_dir.mkdir(parents=True, exist_ok=True)
        (build_dir / "lock").touch()
        print("held", flush=True)
        time.sleep(float(sys.argv[2]))
        (build_dir / "lock").unlink()
""")


def _start_holder(build_dir: Path, hold_s: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": _SRC}
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(build_dir), str(hold_s)],
                            stdout=subprocess.PIPE, text=True, env=env)  # fmt: skip
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_stale_torch_lock_is_removed_and_the_build_runs(tmp_path):
    build_dir = tmp_path / "ext"
    build_dir.mkdir()
    (build_dir / "lock").touch()  # what a SIGKILLed cpp_extension.load leaves
    with pytest.warns(RuntimeWarning, match="killed midway"):
        assert guarded_build(build_dir, lambda: "built", 5.0, "test ext") == "built"
    assert not (build_dir / "lock").exists()


def test_a_build_killed_midway_does_not_block_the_next(tmp_path):
    build_dir = tmp_path / "ext"
    holder = _start_holder(build_dir, 600)
    holder.send_signal(signal.SIGKILL)
    holder.wait(10)
    assert (build_dir / "lock").exists()
    start = time.monotonic()
    with pytest.warns(RuntimeWarning, match="killed midway"):
        assert guarded_build(build_dir, lambda: 42, 30.0, "test ext") == 42
    assert time.monotonic() - start < 5.0  # the kernel released the dead holder's lock


def test_a_live_build_is_waited_for_then_times_out_with_the_holder_named(tmp_path):
    build_dir = tmp_path / "ext"
    holder = _start_holder(build_dir, 600)
    try:
        ran = []
        start = time.monotonic()
        with pytest.warns(RuntimeWarning, match="waiting up to 1 s"):
            with pytest.raises(BuildLockTimeout, match=f"held by process {holder.pid}") as err:
                guarded_build(build_dir, lambda: ran.append(1), 1.0, "test ext")
        assert 1.0 <= time.monotonic() - start < 5.0
        assert not ran
        assert "test ext" in str(err.value) and "ext.guard" in str(err.value)
        assert (build_dir / "lock").exists()  # a live build's lock is left alone
    finally:
        holder.kill()
        holder.wait(10)


def test_a_waiter_builds_once_the_holder_finishes(tmp_path):
    build_dir = tmp_path / "ext"
    holder = _start_holder(build_dir, 1.0)
    said = []
    assert guarded_build(build_dir, lambda: "second", 30.0, "test ext", said.append) == "second"
    assert holder.wait(10) == 0
    assert len(said) == 1 and said[0].startswith("test ext: waiting up to 30 s")
    assert f"held by process {holder.pid}" in said[0]


def test_the_guard_lives_outside_the_build_folder(tmp_path):
    build_dir = tmp_path / "deep" / "ext"  # parents are created; the folder itself is not
    with build_guard(build_dir, 1.0, "test ext") as guard:
        assert guard == tmp_path / "deep" / "ext.guard"
        assert guard.read_text().split()[0] == str(os.getpid())
    assert not build_dir.exists()


# torch's own cpp_extension.load on a one-line C++ file, in the folder where a SIGKILLed build
# left its lock: unguarded, load() waits on that lock forever; guarded, it builds.
_TORCH_BUILD = textwrap.dedent("""
    import ctypes, sys
    from pathlib import Path
    from torch.utils.cpp_extension import load
    from stabledreamer.render.build_guard import guarded_build
    root = Path(sys.argv[1])
    src = root / "tiny.cpp"
    src.write_text('extern "C" int tiny() { return 7; }\\n')
    build_dir = root / "ext" / "tiny"
    build_dir.mkdir(parents=True)
    (build_dir / "lock").touch()
    path = guarded_build(build_dir, lambda: load("tiny", [str(src)], build_directory=str(build_dir),
                                                 is_python_module=False), 120.0, "tiny ext")
    print(ctypes.CDLL(path).tiny())
""")


@pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler")
def test_a_real_torch_build_goes_through_after_a_killed_one(tmp_path):
    env = {**os.environ, "PYTHONPATH": _SRC}
    try:
        out = subprocess.run([sys.executable, "-c", _TORCH_BUILD, str(tmp_path)], env=env,
                             capture_output=True, text=True, timeout=240)  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail("torch's build waited on the stale lock")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "7"
    assert "killed midway" in out.stderr
