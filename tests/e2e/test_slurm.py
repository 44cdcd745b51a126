"""SLURM preemption without a cluster: ``lit-cv fit`` as a job step (the environment ``srun`` exports, a fake
``scontrol``) receives SIGUSR1 like a job 90 s before its time limit; the sbatch scripts run as SLURM runs them, with
the job's environment and a fake ``srun`` that starts their tasks on this machine.

The helpers of ``callbacks/slurm_requeue.py`` are tested on their own in ``tests/callbacks/test_slurm_requeue.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml
from fake_slurm import JOB_ID, SLURM_STEP_ENV, fake_scontrol, fake_srun, job_env, path_without_scontrol
from subprocess_runs import LIT_CV, QUICKSTART, REPO_ROOT, fast_config, kill_group, lit_cv_env, start

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
        kill_group(process)
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
    assert code == 143 and "lit-cv fit: stopped by SIGTERM" in output, "stopped at a batch boundary, not killed"
    assert "has not stopped" not in output  # the SIGTERM watchdog had nothing to do


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
    assert args[0] == "--kill-on-bad-exit=1", "a failed task ends the job step instead of leaving the others waiting"
    args = args[1:]
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
            kill_group(process)

    assert codes == [0, 0], logs()
    assert record.read_text().splitlines() == [f"requeue {JOB_ID}"], "rank 0 alone requeues, once"
    for rank in (0, 1):
        assert "SLURM requeue signal: saving" in (tmp_path / f"rank{rank}.log").read_text()
    assert torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=False)["epoch"] < 49
    assert sorted(p.name for p in (tmp_path / "runs" / "quickstart").iterdir()) == ["version_0"]


# ---------------------------------------------------------------------------------------------- the sbatch scripts, run
# The GPU presets the scripts name, as CPU stand-ins with the same strategy: one CPU device per task.
CPU_STAND_INS = {
    "ddp": {"accelerator": "cpu", "devices": 2, "strategy": "ddp", "num_nodes": 1, "precision": "32-true"},
    "multinode": {"accelerator": "cpu", "devices": 1, "strategy": "ddp", "precision": "32-true"},
}


def _run_job(script: str, cwd: Path, env: dict[str, str], *args: str) -> tuple[int, str]:
    """``bash scripts/slurm/SCRIPT configs/quickstart.yaml ARGS`` in ``cwd``, as SLURM starts a batch script; a run
    past 600 s is killed with all its tasks."""
    process = subprocess.Popen(["bash", str(REPO_ROOT / "scripts" / "slurm" / script), "configs/quickstart.yaml", *args],
                               cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=600)
    finally:
        kill_group(process)
    return process.returncode, output


@pytest.mark.slow
@pytest.mark.timeout(1200)  # two jobs, each bounded by _run_job's 600 s
@pytest.mark.parametrize(("script", "preset", "nodes", "tasks_per_node"),
                         [("one_node.sbatch", "ddp", 1, 2), ("multi_node.sbatch", "multinode", 2, 1)])
def test_sbatch_script_trains_under_a_simulated_slurm_job(
    script: str, preset: str, nodes: int, tasks_per_node: int, tmp_path: Path
) -> None:
    """The script's ``srun lit-cv fit ...`` line starts one process per task (two, on one or two "nodes"); they
    train as one DDP job and log under ``runs/<name>/slurm-<job id>``. Started again, as after a requeue, the job
    continues from its own last.ckpt."""
    shutil.copytree(REPO_ROOT / "configs", tmp_path / "configs")  # the scripts read configs/ from the working dir
    (tmp_path / "configs" / "trainer" / f"{preset}.yaml").write_text(yaml.safe_dump({"trainer": CPU_STAND_INS[preset]}))
    fast_config(tmp_path, max_epochs=1)
    fake_srun(tmp_path / "bin")
    env = lit_cv_env(**job_env(nodes, tasks_per_node),
                     PATH=os.pathsep.join([str(tmp_path / "bin"), str(LIT_CV.parent), os.environ["PATH"]]))

    code, output = _run_job(script, tmp_path, env, "--config", "fast.yaml")

    assert code == 0, output[-4000:]
    run_dir = tmp_path / "runs" / "quickstart" / "slurm-77"
    assert sorted(p.name for p in run_dir.parent.iterdir()) == ["slurm-77"], "one run directory for the job"
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0
    fit = json.loads((run_dir / "metrics.json").read_text())["fit"]
    per_rank = 2 * 32  # fast.yaml's limit_val_batches x the quickstart's batch_size
    assert sum(c["total"] for c in fit["per_class"]["val"].values()) == 2 * per_rank, "both ranks' shards"
    if nodes > 1:
        return  # the requeue path is the same for both scripts

    code, output = _run_job(script, tmp_path, env, "--config", "fast.yaml", "--trainer.max_epochs", "2")

    assert code == 0, output[-4000:]
    assert f"Restoring states from the checkpoint path at {run_dir / 'checkpoints' / 'last.ckpt'}" in output
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1
    assert sorted(p.name for p in run_dir.parent.iterdir()) == ["slurm-77"]
