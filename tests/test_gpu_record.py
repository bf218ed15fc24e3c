"""benchmarks/gpu_record.py, the GPU record prepared for a session that is lent a device: one
call of the device tool runs at most 10 minutes, so the script must keep to its deadline and
bring back what fitted. (Its commands themselves are dry-run on the CPU with ``--smoke``.)"""

import importlib.util
import subprocess
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_record.py"


@pytest.fixture
def gpu_record(monkeypatch):
    """The script as a module, with ``subprocess.run`` recording each command's time limit."""
    spec = importlib.util.spec_from_file_location("gpu_record", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.started = []

    def run(command, stdout, stderr, timeout, env):
        module.started.append((command, timeout))
        killed = env is not None and "MLCL_TEST_KILL_AT" in env
        return subprocess.CompletedProcess(command, -9 if killed else 0)

    monkeypatch.setattr(module.subprocess, "run", run)
    return module


def test_each_command_gets_at_most_the_time_left_before_the_deadline(gpu_record, tmp_path):
    recorder = gpu_record.Recorder(tmp_path, smoke=False, deadline=time.monotonic() + 100)
    assert recorder.mlcl("first", ["bench", "--config", "q2l-coco"], [], limit_s=300)
    ((command, timeout),) = gpu_record.started
    assert 90 < timeout <= 100
    assert command[-1] == "run.device=cuda"
    assert recorder.rows[0][:2] == ("first", "ok")
    assert (tmp_path / "first.log").read_text().startswith(" ".join(command))


def test_a_command_without_enough_time_left_is_skipped_not_started(gpu_record, tmp_path):
    deadline = time.monotonic() + gpu_record.MIN_COMMAND_S - 5
    recorder = gpu_record.Recorder(tmp_path, smoke=True, deadline=deadline)
    assert not recorder.mlcl("late", ["bench", "--config", "q2l-coco"], [], limit_s=300)
    assert gpu_record.started == []
    assert recorder.rows == [("late", "skipped (deadline)", 0.0)]
    assert "| late | skipped (deadline) |" in recorder.table()


def test_smoke_runs_the_same_commands_on_the_cpu(gpu_record, tmp_path):
    recorder = gpu_record.Recorder(tmp_path, smoke=True, deadline=time.monotonic() + 600)
    gpu_record.part_bench(recorder)
    commands = [command for command, _ in gpu_record.started]
    assert [command[command.index("--config") + 1] for command in commands] == list(
        gpu_record.PRESETS
    )
    for command in commands:
        assert "run.device=cpu" in command and "run.device=cuda" not in command
        assert "model.pretrained=false" in command  # the device reaches no weight hub


def test_a_planned_kill_is_the_expected_ending_and_only_then(gpu_record, tmp_path, monkeypatch):
    recorder = gpu_record.Recorder(tmp_path, smoke=True, deadline=time.monotonic() + 600)
    assert recorder.mlcl("killed", ["train", "--config", "q2l-coco"], [], 300, kill_at_step=6)
    assert recorder.rows[-1][:2] == ("killed", "ok")
    died = lambda command, **_: subprocess.CompletedProcess(command, -9)  # noqa: E731
    monkeypatch.setattr(gpu_record.subprocess, "run", died)
    assert not recorder.mlcl("died", ["train", "--config", "q2l-coco"], [], 300)
    assert recorder.rows[-1][:2] == ("died", "failed (-9)")
