"""Guards bench/gpu_check (the one-shot GPU check): its CPU dry run on a tiny Llama trains the
plain transformers + PEFT path, merges, reloads, generates and takes a DPO step; the Unsloth path
says it needs CUDA; the summary carries numbers; the shell wrapper refuses a missing wheel folder
and installs nothing when every wheel is there; wheel trimming keeps the RECORD true."""

import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
MODULE = ROOT / "bench" / "gpu_check.py"


def load_module():
    spec = importlib.util.spec_from_file_location("gpu_check", MODULE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """The whole check on CPU: tiny model, 2 steps, MFU against a made-up 1 TFLOP/s peak."""
    tmp = tmp_path_factory.mktemp("gpu-check")
    env = {**os.environ, "OUT": str(tmp / "out"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(MODULE), "--tiny", "--device", "cpu", "--steps", "2",
         "--lengths", "24:48", "--work", str(tmp / "work"), "--peak-tflops", "1.0"],
        cwd=ROOT, env=env, check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    return summary, tmp


def test_dry_run_summary_has_the_expected_keys(dry_run):
    summary, tmp = dry_run
    assert summary["device"] == "cpu" and summary["tiny"] is True
    assert set(summary["phases"]) == {"model", "unsloth", "hf", "merge", "dpo"}
    recipe = summary["recipe"]
    assert recipe["load_in_4bit"] is True and recipe["lora_r"] == 16
    assert recipe["batch_size"] * recipe["grad_accum"] == 8
    assert "gate_proj" in recipe["target_modules"]
    # the file under $OUT is the printed line
    written = json.loads((tmp / "out" / "gpu_check.json").read_text())
    assert written == summary


def test_unsloth_path_is_skipped_without_cuda(dry_run):
    summary, _ = dry_run
    assert summary["phases"]["unsloth"] == {"status": "skipped: needs CUDA"}


def test_plain_path_trains_and_reports_speed(dry_run):
    summary, _ = dry_run
    model, hf = summary["phases"]["model"], summary["phases"]["hf"]
    assert model["status"] == "ok" and model["layers"] == 2 and model["hidden"] == 64
    assert hf["status"] == "ok", hf
    assert hf["quantization"] == "none (fp32 LoRA)"  # no 4-bit without CUDA
    assert hf["steps"] == 2 and len(hf["losses"]) == 2
    assert all(0 < loss < 20 for loss in hf["losses"])
    assert hf["timed_tokens"] >= 8 * 24 and hf["tokens_per_s"] > 0
    # MFU = 6 * N * tokens/s / peak (here 1 TFLOP/s)
    expected = 6 * model["params"] * hf["tokens_per_s"] / 1e12
    assert hf["mfu"] == pytest.approx(expected, rel=1e-2, abs=1e-4)
    assert hf["peak_vram_gib"] is None and hf["peak_rss_gib"] > 0
    assert 0 < hf["trainable_params"] < model["params"]


def test_merged_model_reloads_and_generates(dry_run):
    summary, tmp = dry_run
    merge = summary["phases"]["merge"]
    assert merge["status"] == "ok", merge
    assert merge["adapter"] == "adapter-hf"
    assert merge["adapter_effect"] > 0  # training moved the LoRA weights off zero
    # the reloaded 16-bit merge answers as base + adapter, up to bf16 rounding
    assert merge["merged_vs_adapter_max_diff"] < merge["adapter_effect"] / 2
    assert len(merge["generated_ids"]) == 8
    assert all(isinstance(i, int) for i in merge["generated_ids"])
    assert not (tmp / "work" / "merged").exists()  # removed unless --keep


def test_dpo_step_runs(dry_run):
    summary, _ = dry_run
    dpo = summary["phases"]["dpo"]
    assert dpo["status"] == "ok", dpo
    assert dpo["backend"] == "hf" and dpo["steps"] == 1
    assert 0 < dpo["loss"] < 5


def test_wrapper_is_valid_bash():
    proc = subprocess.run(["bash", "-n", str(SCRIPT)], check=False, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_wrapper_refuses_a_missing_wheel_folder(tmp_path):
    missing = tmp_path / "no-wheels"
    proc = subprocess.run(["bash", str(SCRIPT), str(missing)], check=False,
                          capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable})
    assert proc.returncode == 2
    assert f"wheel folder '{missing}' not found" in proc.stderr
    assert "--pack" in proc.stderr
    proc = subprocess.run(["bash", str(SCRIPT)], check=False, capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "GPU_CHECK_WHEELS"})
    assert proc.returncode == 2 and "give the wheel folder" in proc.stderr


def test_wrapper_installs_nothing_already_installed(tmp_path):
    """A folder holding only an installed version is left alone, and the check starts
    (here it stops at once: one step is refused)."""
    import peft

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / f"peft-{peft.__version__}-py3-none-any.whl").write_bytes(b"not read")
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_SITE": str(tmp_path / "site")}
    proc = subprocess.run(["bash", str(SCRIPT), str(wheels), "--steps", "1"],
                          check=False, capture_output=True, text=True, env=env)
    assert "is installed already" in proc.stdout
    assert proc.returncode == 2 and "--steps must be at least 2" in proc.stderr


def test_trim_wheels_drops_studio_and_its_record_lines(tmp_path):
    wheel = tmp_path / "unsloth-2026.10.7-py3-none-any.whl"
    record = ("unsloth/__init__.py,sha256=x,3\nstudio/app.js,sha256=y,5\n"
              "unsloth-2026.10.7.dist-info/RECORD,,\n")
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("unsloth/__init__.py", "x=1")
        zf.writestr("studio/app.js", "big()")
        zf.writestr("unsloth-2026.10.7.dist-info/RECORD", record)
    load_module().trim_wheels(tmp_path)
    with zipfile.ZipFile(wheel) as zf:
        assert sorted(zf.namelist()) == ["unsloth-2026.10.7.dist-info/RECORD",
                                         "unsloth/__init__.py"]
        kept = zf.read("unsloth-2026.10.7.dist-info/RECORD").decode()
    assert "studio/" not in kept and "unsloth/__init__.py" in kept
