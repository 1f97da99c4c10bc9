"""Builds into one model at the same moment all succeed as consecutive versions, and the staging folders of
killed builds are named by `export list` and `runtime verify` and removed by the next build."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from export import graphs
from export.cli import main as export_main
from runtime.commands.cli import main as runtime_main
from runtime.digests import config_digests
from runtime.manifest import load_manifest, version_digest
from runtime.staging import host_name, is_stale, staging_folders
from tests.conftest import missing
from tests.exportkit import base_spec, save_graph, write_spec

BUILDS = 4


def build_command(onnx_path: Path, spec_path: Path, repository: Path) -> list[str]:
    return [sys.executable, "-m", "export", "build", "--from-onnx", str(onnx_path), "--spec", str(spec_path),
            "--repository", str(repository)]


@pytest.fixture()
def sources(tmp_path: Path) -> tuple[Path, Path]:
    return save_graph(tmp_path, graphs.bright_structures(3)), write_spec(tmp_path, base_spec())


def dead_pid() -> int:
    """The PID of a process that has exited and been reaped."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(done.stdout)


def staging_folder(model_dir: Path, version: int, pid: int, host: str | None = None) -> Path:
    folder = model_dir / f".{version}.building-{pid}-0123abcd-{host or host_name()}"
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"\0" * 1024)
    return folder


def test_builds_started_together_all_succeed_as_consecutive_versions(tmp_path: Path,
                                                                     sources: tuple[Path, Path]) -> None:
    repository = tmp_path / "repo"
    processes = [subprocess.Popen(build_command(*sources, repository), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for _ in range(BUILDS)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in processes]
    assert [code for code, _, _ in results] == [0] * BUILDS, [err for _, _, err in results]
    printed = sorted(out.splitlines()[0] for _, out, _ in results)
    model = repository / "bright"
    assert printed == sorted(str(model / str(v)) for v in range(1, BUILDS + 1))
    assert sorted(p.name for p in model.iterdir() if not p.name.startswith(".")) == [
        *map(str, range(1, BUILDS + 1)), "config.pbtxt"]
    assert staging_folders(model) == []
    assert config_digests(model) == {v: version_digest(model / str(v)) for v in range(1, BUILDS + 1)}
    assert [load_manifest(model / str(v))[0].version for v in range(1, BUILDS + 1)] == list(range(1, BUILDS + 1))


def test_a_killed_build_leaves_a_stale_folder_that_list_and_verify_name_and_the_next_build_removes(
        tmp_path: Path, sources: tuple[Path, Path]) -> None:
    repository, model = tmp_path / "repo", tmp_path / "repo" / "bright"
    assert subprocess.run(build_command(*sources, repository), capture_output=True, timeout=300).returncode == 0
    staging = kill_a_build_midway(build_command(*sources, repository), model)
    assert is_stale(staging_folders(model)[0])
    listed = CliRunner().invoke(export_main, ["list", str(repository)])
    assert listed.exit_code == 0
    assert listed.output.splitlines()[-1] == (
        f"stale staging folder {staging} (version 2; its build process {staging_folders(model)[0].pid} is gone); "
        "the next `python -m export build` of this model removes it")
    verified = CliRunner().invoke(runtime_main, ["verify", str(model / "1")])
    assert verified.exit_code == 0 and f"  stale staging folder {staging} " in verified.output, verified.output

    done = subprocess.run(build_command(*sources, repository), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == str(model / "2")
    assert [line for line in done.stderr.splitlines() if "stale" in line] == [
        f"warning: removed stale staging folder {staging}: its build process "
        f"{staging.name.split('-')[1]} is gone"]
    assert not staging.exists() and staging_folders(model) == []


def kill_a_build_midway(command: list[str], model: Path) -> Path:
    """Start a build, SIGKILL it once its staging folder exists, and return that folder."""
    for _ in range(5):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline and not staging_folders(model):
            time.sleep(0.001)
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait()
        if staging_folders(model):
            return staging_folders(model)[0].path
        for version in sorted((p for p in model.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))[1:]:
            shutil.rmtree(version)           # the build finished before it was seen: try again
    pytest.fail("no build was caught with its staging folder in place")


def test_a_folder_of_a_dead_process_is_removed_and_its_version_reused(tmp_path: Path,
                                                                       sources: tuple[Path, Path]) -> None:
    model = tmp_path / "repo" / "bright"
    stale = staging_folder(model, 1, dead_pid())
    done = subprocess.run(build_command(*sources, tmp_path / "repo"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == str(model / "1")
    assert f"removed stale staging folder {stale}" in done.stderr and not stale.exists()


def test_a_live_builds_folder_is_kept_and_its_version_skipped(tmp_path: Path, sources: tuple[Path, Path]) -> None:
    model = tmp_path / "repo" / "bright"
    live = staging_folder(model, 1, os.getpid())
    other_host = staging_folder(model, 2, dead_pid(), host="another-node")
    done = subprocess.run(build_command(*sources, tmp_path / "repo"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == str(model / "3")
    assert live.is_dir() and other_host.is_dir() and "stale" not in done.stderr


def test_a_reused_pid_does_not_keep_a_folder_alive(tmp_path: Path) -> None:
    if not Path("/proc/self/stat").is_file():
        missing("/proc is not mounted; process start times come from /proc/<pid>/stat")
    model = tmp_path / "bright"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        folder = staging_folder(model, 1, sleeper.pid)
        assert not is_stale(staging_folders(model)[0])
        an_hour_ago = time.time() - 3600
        os.utime(folder, (an_hour_ago, an_hour_ago))       # made long before the process with its PID started
        assert is_stale(staging_folders(model)[0])
    finally:
        sleeper.kill()
        sleeper.wait()
    assert is_stale(staging_folders(model)[0])
