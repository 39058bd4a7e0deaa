"""The `mmfm` command, run for real in a subprocess."""

import json
import shutil
import subprocess
import sys

import mmfm


def run(*args, timeout=180):
    exe = shutil.which("mmfm")
    cmd = [exe, *args] if exe else [sys.executable, "-m", "mmfm.cli.main", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def test_help_and_version():
    res = run("--help")
    assert res.returncode == 0 and "world" in res.stdout and "quickstart" in res.stdout
    res = run("version")
    assert res.returncode == 0 and res.stdout.strip() == mmfm.__version__


def test_bad_option_is_a_clear_error(tmp_path):
    res = run("world", "sample", "--n", "0", "--out", str(tmp_path))
    assert res.returncode != 0 and "Traceback" not in res.stderr
    res = run("world", "sample", "--n", "2", "--split", "nope", "--out", str(tmp_path))
    assert res.returncode == 2 and "unknown split" in res.stderr and "Traceback" not in res.stderr


def test_quickstart_runs_end_to_end_when_shortened(tmp_path):
    """The real pipeline with a tiny budget (the full one is the README's first command)."""
    res = run(
        "quickstart", "--out", str(tmp_path / "qs"), "--steps", "3", "--scenes", "512", "--eval-n", "60", timeout=600
    )
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "qs" / "world" / "grid.png").is_file()
    assert "ensemble" in res.stdout and "heldout" in res.stdout
    report = json.loads((tmp_path / "qs" / "clip" / "report.json").read_text())
    assert set(report["zeroshot"]) == {"seen", "heldout"} and "linear_probe" in report
    assert (tmp_path / "qs" / "clip" / "model" / "model.safetensors").is_file()
    assert (tmp_path / "qs" / "clip" / "curves.png").is_file()


def test_allocator_setting_applies_on_linux_and_can_be_declined():
    import os
    import subprocess
    import sys

    code = "from mmfm.runtime import tune_malloc; print(tune_malloc())"
    for env, want in (({}, "True"), ({"MMFM_MALLOC_DEFAULTS": "1"}, "False")):
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env})
        assert r.stdout.strip() == (want if sys.platform.startswith("linux") else "False"), r.stderr
