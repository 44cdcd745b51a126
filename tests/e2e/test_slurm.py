"""SLURM preemption without a cluster: ``lit-cv fit`` as a job step (the environment ``srun`` exports, a fake
``scontrol``) receives SIGUSR1 like a job 90 s before its time limit; the sbatch scripts run with a fake ``srun``.

The helpers of ``callbacks/slurm_requeue.py`` are tested on their own in ``tests/callbacks/test_slurm_requeue.py``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml
from fake_slurm import JOB_ID, SLURM_STEP_ENV, fake_scontrol, path_without_scontrol
from subprocess_runs import QUICKSTART, fast_config, lit_cv_env, start

from lit_cv.cli import main


# ---------------------------------------------------------------------------------------------- a real fit, signalled
def _signal_running_fit(tmp_path: Path, env: dict[str, str], max_epochs: int) -> tuple[int, str, Path]:
    """Start ``lit-cv fit`` as a SLURM job step, send SIGUSR1 once training is under way (the first ``last.ckpt``
    exists), wait for the exit. Returns (exit code, output, checkpoint directory)."""
    config = fast_config(tmp_path, max_epochs=max_epochs, limit_train_batches=20, limit_val_batches=1)
    log = tmp_path / "fit.log"
    process = start(["fit", "--config", QUICKSTART, "--config", config], cwd=tmp_path, log=log, env=env)
    checkpoints = tmp_path / "runs" / "quickstart" / "version_0" / "checkpoints"
    deadline = time.monotonic() + 240
    try:
        while not (checkpoints / "last.ckpt").exists():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"fit ended or stalled before its first checkpoint:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)
        process.send_signal(signal.SIGUSR1)
        code = process.wait(timeout=240)
    finally:
        if process.poll() is None:
            process.kill()
    return code, log.read_text(), checkpoints


def test_sigusr1_checkpoints_then_requeues(tmp_path: Path) -> None:
    record = tmp_path / "scontrol_calls.txt"
    # Like the real controller, the fake scontrol answers the requeue with SIGTERM to the job (Lightning #20542).
    fake_scontrol(tmp_path / "bin", record, then_sigterm=True)
    env = lit_cv_env(**SLURM_STEP_ENV, PATH=path_without_scontrol(tmp_path / "bin"))
    max_epochs = 50

    code, output, checkpoints = _signal_running_fit(tmp_path, env, max_epochs)

    assert record.read_text().splitlines() == [f"requeue {JOB_ID}"], output[-3000:]
    assert "SLURM requeue signal: saving" in output
    checkpoint = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=False)
    assert 0 < checkpoint["epoch"] < max_epochs - 1, "training stopped early, at the preemption checkpoint"
    # Lightning's in-handler checkpoint (hpc_ckpt_N.ckpt in default_root_dir) was not used.
    assert not list(tmp_path.rglob("hpc_ckpt_*.ckpt"))
    assert code == 0, "stopped by the requeue, not killed"


def test_missing_scontrol_is_reported_and_training_continues(tmp_path: Path) -> None:
    env = lit_cv_env(**SLURM_STEP_ENV, PATH=path_without_scontrol(None))
    max_epochs = 3

    code, output, checkpoints = _signal_running_fit(tmp_path, env, max_epochs)

    assert code == 0, output[-3000:]
    assert "SLURM requeue signal: saving" in output
    assert "`scontrol` is not on PATH" in output
    checkpoint = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["epoch"] == max_epochs - 1, "without a requeue, the fit runs to its end"


# ---------------------------------------------------------------------------------------------- the sbatch scripts
@pytest.mark.parametrize(("script", "preset"), [("one_node.sbatch", "ddp"), ("multi_node.sbatch", "multinode")])
def test_sbatch_script_runs_a_resumable_fit_that_parses(
    script: str, preset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Run the batch script with a fake ``srun`` that records its command, then parse that command."""
    repo = Path(__file__).resolve().parents[2]
    record = tmp_path / "srun_args.txt"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{record}"\n')
    (bin_dir / "srun").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_ID": "77",
           "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_JOB_NUM_NODES": "2"}
    env.pop("SLURM_ARRAY_JOB_ID", None)
    subprocess.run(["bash", str(repo / "scripts" / "slurm" / script), "configs/quickstart.yaml", "--trainer.max_epochs",
                    "3"], cwd=repo, env=env, check=True, capture_output=True, timeout=60)

    args = record.read_text().splitlines()
    assert args[:2] == ["lit-cv", "fit"]
    assert args[args.index("--ckpt_path") + 1] == "last"
    assert f"configs/trainer/{preset}.yaml" in args and args[-2:] == ["--trainer.max_epochs", "3"]
    monkeypatch.chdir(repo)
    with pytest.raises(SystemExit):
        main([*args[1:], "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["trainer"]["logger"]["init_args"]["version"] == "slurm-77"  # log directory per job id
    assert (config["ckpt_path"], config["trainer"]["max_epochs"], config["trainer"]["strategy"]) == ("last", 3, "ddp")
    (slurm,) = [p for p in config["trainer"]["plugins"] if p["class_path"].endswith(".SLURMEnvironment")]
    assert slurm["init_args"]["auto_requeue"] is True


@pytest.mark.slow
def test_two_rank_job_step_agrees_to_checkpoint_and_requeue_once(tmp_path: Path) -> None:
    """Two tasks as ``srun --ntasks-per-node=2`` starts them (DDP over gloo). SIGUSR1 reaches rank 1 only: the
    ranks still agree at the next batch, write one checkpoint, rank 0 alone calls scontrol, and both stop together."""
    record = tmp_path / "scontrol_calls.txt"
    fake_scontrol(tmp_path / "bin", record)
    config = fast_config(tmp_path, max_epochs=50, limit_train_batches=20, limit_val_batches=1,
                         strategy="ddp", accelerator="cpu", devices=2)
    step_env = {**SLURM_STEP_ENV, "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2"}
    env = lit_cv_env(**step_env, PATH=path_without_scontrol(tmp_path / "bin"))
    processes = [
        start(["fit", "--config", QUICKSTART, "--config", config], cwd=tmp_path, log=tmp_path / f"rank{rank}.log",
              env={**env, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)})
        for rank in (0, 1)
    ]
    checkpoints = tmp_path / "runs" / "quickstart" / "version_0" / "checkpoints"

    def logs() -> str:
        return "\n".join((tmp_path / f"rank{rank}.log").read_text()[-2000:] for rank in (0, 1))

    try:
        deadline = time.monotonic() + 300
        while not (checkpoints / "last.ckpt").exists():
            assert all(p.poll() is None for p in processes) and time.monotonic() < deadline, logs()
            time.sleep(0.05)
        processes[1].send_signal(signal.SIGUSR1)
        codes = [p.wait(timeout=300) for p in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()

    assert codes == [0, 0], logs()
    assert record.read_text().splitlines() == [f"requeue {JOB_ID}"], "rank 0 alone requeues, once"
    for rank in (0, 1):
        assert "SLURM requeue signal: saving" in (tmp_path / f"rank{rank}.log").read_text()
    assert torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=False)["epoch"] < 49
    assert sorted(p.name for p in (tmp_path / "runs" / "quickstart").iterdir()) == ["version_0"]
