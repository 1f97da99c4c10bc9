"""A local Triton Inference Server for a model repository: found, prepared, started, watched (a
Python-backend stub that dies stops it: runtime.triton.stubs).

The server is `$TRITONSERVER`, else the one the `nvidia-pytriton` wheel ships (with its
Python-backend stub for this interpreter's Python version, linked into a backend folder of its
own), else `tritonserver` on PATH. The Python backend's stub runs Python isolated and takes the
first `python3` on PATH: this interpreter's folder goes first, so the stub sees this environment's
packages (the runtime among them), and LD_LIBRARY_PATH gives it this interpreter's libpython and
the wheel's libraries.
"""
from __future__ import annotations

import ctypes
import errno
import importlib.util
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from runtime.digests import MAX_CONFIG_BYTES
from runtime.errors import InputError
from runtime.triton.stubs import watch
from runtime.triton.watchdog import PREFIX_START

READY_TIMEOUT_S = 180.0
# An error line of Triton's log: a severity letter E, the date, the time, the thread, the source.
_ERROR_LINE = re.compile(r"E\d{4} [\d:.]+ +\d+ [^\]]*\] (.*)")
# An error of the protobuf library Triton parses configs with (`[libprotobuf ERROR file.cc:335] ...`).
_PROTOBUF_ERROR = re.compile(r"\[libprotobuf ERROR [^\]]*\] (.*)")
_CRASH = re.compile(r"terminate called|^\s*what\(\):|Signal \((?!15\))\d+\) received")   # 15: asked to stop
# What every server on a machine without a GPU says, and the half of a failed load that its
# "failed to load 'NAME' version N: ..." line says again.
_SAID_ELSEWHERE = ("CudaDriverHelper has not been initialized", "ERROR: Failed to create instance:")
# The lines at the end of a server's log that say why it stopped, after the last model it loaded
# (an error before that was mended, or is another's).
LAST_WORDS = 40
_LOADED = re.compile(r"\] \"successfully loaded '")
MAX_MESSAGE = 600
STOP_TIMEOUT_S = 30.0
# How long a server whose starter died is given to stop on SIGTERM before SIGKILL: its own exit
# timeout, and time to leave it (runtime.triton.watchdog).
WATCHDOG_TIMEOUT_S = STOP_TIMEOUT_S + 15.0
# How long a watchdog told that its server ended is waited for.
KILL_WAIT_S = 5.0
# Where the Python backend keeps its shared-memory regions.
INSTALL_HINT = ("pip install --no-deps nvidia-pytriton==0.7.0 (a tritonserver with the Python backend), "
                "or set TRITONSERVER")


@dataclass(frozen=True)
class TritonInstall:
    """A tritonserver binary, the backend folder to pass it (None: its own) and the library folders
    it needs."""

    binary: Path
    backends: Path | None
    library_path: tuple[str, ...]


@dataclass(frozen=True)
class Ports:
    address: str
    http: int
    grpc: int
    metrics: int


def find_triton(work: Path) -> TritonInstall:
    """The server to run, its backend folder prepared under `work`; InputError where there is none."""
    explicit = os.environ.get("TRITONSERVER")
    if explicit:
        if not Path(explicit).is_file():
            raise InputError(f"TRITONSERVER={explicit} is not a file; point it at the tritonserver binary.")
        return TritonInstall(Path(explicit), None, ())
    wheel = _pytriton_install(work)
    if wheel is not None:
        return wheel
    on_path = shutil.which("tritonserver")
    if on_path is None:
        raise InputError("no tritonserver found (TRITONSERVER unset, no nvidia-pytriton, none on PATH): "
                         f"{INSTALL_HINT}.")
    return TritonInstall(Path(on_path), None, ())


def _pytriton_install(work: Path) -> TritonInstall | None:
    """The server in the nvidia-pytriton wheel, with a backend folder holding this Python's stub:
    the backend looks for its stub in its own folder, so a folder of links puts the right one there."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(spec.submodule_search_locations[0]) / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise InputError(f"nvidia-pytriton at {root} has no Python-backend stub for Python {version}; use a Python "
                         "it ships one for, or another Triton (TRITONSERVER).")
    python = work / "backends" / "python"
    python.mkdir(parents=True, exist_ok=True)
    for source in (root / "backends" / "python" / "libtriton_python.so",
                   root / "backends" / "python" / "triton_python_backend_utils.py", stub):
        link = python / source.name
        if not link.exists():
            link.symlink_to(source)
    libs = str(root.parents[1] / "nvidia_pytriton.libs")
    return TritonInstall(root / "bin" / "tritonserver", python.parent, (libs,))


def server_environment(install: TritonInstall) -> dict[str, str]:
    """The environment under which the backend's Python sees this interpreter's packages."""
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    paths = [*install.library_path, libdir, env.get("LD_LIBRARY_PATH", "")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in paths if p)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def check_repository(repository: Path) -> list[str]:
    """The model names of a Triton model repository (folders with a config.pbtxt); InputError where
    it holds none."""
    if not repository.is_dir():
        raise InputError(f"{repository} is not a folder; give the model repository (e.g. model_repository/).")
    names = sorted(p.name for p in repository.iterdir() if (p / "config.pbtxt").is_file())
    if not names and (repository / "config.pbtxt").is_file():
        raise InputError(f"{repository} is a model folder (it holds a config.pbtxt), not a model repository; give "
                         f"the folder that holds it: {repository.resolve().parent}.")
    if not names and (repository.resolve().parent / "config.pbtxt").is_file():
        raise InputError(f"{repository} is a version folder of model {repository.resolve().parent.name}, not a model "
                         f"repository; give the folder that holds the model: {repository.resolve().parent.parent}.")
    if not names:
        raise InputError(f"{repository} holds no model folder with a config.pbtxt; build one with "
                         "`python -m export build`.")
    return names


def check_models(repository: Path, names: Sequence[str]) -> list[str]:
    """Each model of the repository as the server would load it, checked before it starts, so that a
    broken one is one line naming it instead of the server's "failed to load all models": its
    config.pbtxt well formed and naming the model as its folder is named, and each version folder
    its version policy serves holding a manifest that loads with its files' hashes and the digest the
    config records (the others the server never loads). A
    `<name>_windows` companion is checked through the model it serves; a plain Triton model (the
    `<name>_onnx` one of `export build --triton-onnx`, say: its config records no version digests)
    by its config alone. Returns a warning for each version it serves that its config records no
    digest for, beside versions it records (a folder copied or added by hand): served unpinned."""
    from runtime.digests import DIGESTS_PARAMETER, check_config_digest, config_digests, load_as_exported
    from runtime.pbtxt import config_parameters, served_versions
    from runtime.manifest import MANIFEST_FILE, is_windows_companion, version_folders

    warnings = []
    for name in names:
        folder = repository / name
        text = _check_config_text(folder / "config.pbtxt", name)
        if is_windows_companion(folder):
            continue
        if DIGESTS_PARAMETER not in config_parameters(text, str(folder / "config.pbtxt")):   # Triton's own model
            continue
        versions = version_folders(folder)
        if not versions:
            raise InputError(f"model {folder} holds no version folder (1/, 2/, ...); build one with "
                             "`python -m export build`.")
        served = served_versions(text, str(folder / "config.pbtxt"), [int(p.name) for p in versions])
        if not served:
            raise InputError(f"{folder / 'config.pbtxt'}: its version_policy serves none of the versions in {folder} "
                             f"({', '.join(p.name for p in versions)}); name one of them, or serve the newest.")
        for version in (p for p in versions if int(p.name) in served):
            if not (version / MANIFEST_FILE).is_file():
                raise InputError(f"{version} holds no {MANIFEST_FILE}; a version of a runtime model needs the one "
                                 "`python -m export build` wrote: put it back, or build the version again.")
            load_as_exported(version)
            check_config_digest(version)
        recorded = config_digests(folder) or {}
        warnings += [f"version {v} of model {name} is not recorded in {folder / 'config.pbtxt'} (which records "
                     f"version(s) {', '.join(map(str, sorted(recorded)))}): it is served unpinned. An export records "
                     "each version it builds; this one was copied or added by hand, or its export stopped before it "
                     "recorded it. Build it with `python -m export build` to serve it pinned."
                     for v in sorted(served) if recorded and v not in recorded]
    return warnings


def check_backends(repository: Path, names: Sequence[str], install: TritonInstall) -> None:
    """InputError naming a model whose backend the server does not have (the `<name>_onnx` model of
    `export build --triton-onnx` on the nvidia-pytriton wheel's server, which has the Python backend
    alone): the server would load the others and then exit, serving none. Checked where the server's
    backend folder is known: the one prepared for the wheel's server, or Triton's usual one."""
    from runtime.pbtxt import config_backend

    folder = install.backends if install.backends is not None else DEFAULT_BACKENDS
    if not folder.is_dir():
        return
    present = {entry.name for entry in folder.iterdir()}
    for name in names:
        config = repository / name / "config.pbtxt"
        backend = config_backend(config.read_bytes()[:MAX_CONFIG_BYTES].decode("utf-8", "replace"), str(config))
        if backend is not None and backend not in present:
            have = ", ".join(sorted(present)) or "none"
            raise InputError(f"model {name} runs on Triton's {backend} backend, which this tritonserver "
                             f"({install.binary}) does not have (its backends: {have}); serve it from a Triton with "
                             f"that backend (the Dockerfile's image), or move {repository / name} out of the "
                             "repository: the server would exit, serving no model.")


# Where a Triton installed as NVIDIA's images install it keeps its backends.
DEFAULT_BACKENDS = Path("/opt/tritonserver/backends")


def _check_config_text(path: Path, name: str) -> str:
    """A config.pbtxt's text; InputError where its brackets or quotes do not pair up (reported by
    line), or its top-level model name is not its folder's (protobuf text: "..." or '...' strings
    with backslash escapes, # comments)."""
    text = path.read_bytes()[:MAX_CONFIG_BYTES].decode("utf-8", "replace")
    restore = "restore the config that `python -m export build` wrote"
    opened: list[tuple[str, int]] = []
    top_name: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        index = 0
        while index < len(line):
            char = line[index]
            if char == "#":
                break
            if char in "\"'":
                end = _string_end(line, index)
                if end is None:
                    raise InputError(f"{path} line {number}: a quoted string does not end on its line; {restore}.")
                if not opened and top_name is None and re.fullmatch(r"\s*name\s*:\s*", line[:index]):
                    top_name = line[index + 1:end]
                index = end + 1
                continue
            if char in "{[":
                opened.append((char, number))
            elif char in _CLOSING and (not opened or opened.pop()[0] != _CLOSING[char]):
                raise InputError(f"{path} line {number}: '{char}' closes nothing it opened; {restore}.")
            index += 1
    if opened:
        char, number = opened[-1]
        raise InputError(f"{path} line {number}: '{char}' is never closed; {restore}.")
    if top_name is not None and top_name != name:
        raise InputError(f"{path} names the model {top_name!r}, but its folder is {name!r}; Triton needs the two to "
                         "agree: rename one of them.")
    return text


_CLOSING = {"}": "{", "]": "["}


def _string_end(line: str, start: int) -> int | None:
    """The index of the quote that ends the string opening at `start`, escapes skipped; None when
    the line ends first."""
    quote, index = line[start], start + 1
    while index < len(line):
        if line[index] == "\\":
            index += 2
            continue
        if line[index] == quote:
            return index
        index += 1
    return None


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def url_host(address: str) -> str:
    """`address` as the host part of a URL (an IPv6 address in brackets)."""
    return f"[{address}]" if ":" in address else address


def check_ports(ports: Ports) -> None:
    """InputError naming the first port something already listens on (a server started on a busy
    port loads every model and only then exits)."""
    for option, port in (("--http-port", ports.http), ("--grpc-port", ports.grpc),
                         ("--metrics-port", ports.metrics)):
        with socket.socket(_family(ports.address)) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((ports.address, port))
            except OSError as error:
                if isinstance(error, socket.gaierror) or error.errno == errno.EADDRNOTAVAIL:
                    raise InputError(f"--address {ports.address} cannot be listened on ({error.strerror or error}); "
                                     "give an address of this machine: 127.0.0.1, or 0.0.0.0 for all of them.") \
                        from None
                if error.errno == errno.EACCES:
                    raise InputError(f"{ports.address}:{port} ({option}) may not be listened on by this user "
                                     f"({error.strerror}); ports below 1024 need privileges: choose another "
                                     f"{option}.") from None
                raise InputError(f"{ports.address}:{port} ({option}) is not free ({error.strerror}); stop what "
                                 f"listens there or choose another {option}.") from None


def check_backend_python() -> None:
    """InputError where the Python the stub will run cannot import the runtime or numpy."""
    probe = [sys.executable, "-I", "-c", "import numpy, runtime.triton.model"]
    done = subprocess.run(probe, capture_output=True, text=True)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        raise InputError(f"the Python the server's backend runs ({sys.executable}) cannot import the runtime ({last}); "
                         "install the project in it (pip install .).")


def shm_prefix(pid: int) -> str:
    """The name the Python backend's shared-memory regions of a server started by process `pid`
    begin with, in SHM_DIR (Triton leaves them there when it is killed or stops past its timeout):
    with a token of its own, so that two servers (of one process, or of two containers sharing
    SHM_DIR whose processes have one PID) never share it."""
    return f"{PREFIX_START}{pid}_{secrets.token_hex(6)}_"


def command(install: TritonInstall, repository: Path, ports: Ports, poll: int | None = None,
            regions: str | None = None) -> list[str]:
    """The tritonserver command line; `poll`: seconds between looks at the repository for new,
    changed or removed versions, loaded or unloaded while the server runs (None: read once);
    `regions`: the prefix of its Python backend's shared-memory regions (`shm_prefix`)."""
    line = [
        str(install.binary), f"--model-repository={repository.resolve()}",
        f"--http-address={ports.address}", f"--http-port={ports.http}",
        f"--grpc-address={ports.address}", f"--grpc-port={ports.grpc}",
        f"--metrics-address={ports.address}", f"--metrics-port={ports.metrics}",
        "--allow-gpu-metrics=false", "--exit-on-error=true", "--strict-readiness=true",
        f"--exit-timeout-secs={int(STOP_TIMEOUT_S)}",
    ]
    if install.backends is not None:
        line.append(f"--backend-directory={install.backends}")
    if poll is not None:
        line += ["--model-control-mode=poll", f"--repository-poll-secs={int(poll)}"]
    if regions is not None:
        line.append(f"--backend-config=python,shm-region-prefix-name={regions}")
    return line


def wait_ready(process: subprocess.Popen, ports: Ports, log: Path, timeout: float = READY_TIMEOUT_S) -> None:
    """Return once the server answers ready on HTTP; InputError with the log's last lines where it
    exits or is not ready in time."""
    url = f"http://{url_host(ports.address)}:{ports.http}/v2/health/ready"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise InputError(f"tritonserver exited with code {process.returncode} before it was ready; its log "
                             f"({log}) says: {log_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise InputError(f"tritonserver was not ready within {timeout:.0f} s; its log ({log}) ends: {log_tail(log)}")


def log_tail(log: Path, lines: int = 3, since_loaded: bool = False) -> str:
    """What a server's log says of why it stopped: the message of the last error line among its last
    lines (`since_loaded`: after it last loaded a model, for a server that ran: an error before
    was mended, or another model's) and a crash's own words, where they have them; else its last
    `lines` lines."""
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    loaded = max((index for index, line in enumerate(text) if _LOADED.search(line)), default=-1) \
        if since_loaded else -1
    last = text[max(loaded + 1, len(text) - LAST_WORDS):]     # what it said as it stopped: not an error of before
    errors = [message for line in last if _ERROR_LINE.match(line) and (message := problem(line))]
    crash = [line.strip() for line in last if _CRASH.search(line)]
    return " | ".join(errors[-1:] + crash[:2] or [line.strip() for line in text[-lines:]]) or "(empty)"


def problem(line: str) -> str | None:
    """The message of one of Triton's error lines (`E1207 05:28:35.123 4242 file.cc:642] "..."`) or
    of its protobuf library's, without its quotes and the Python traceback the backend appends; a crash's own words
    (`terminate called ...`, `what(): ...`, `Signal (6) received.`); None for any other line and for
    what another line says (`_SAID_ELSEWHERE`)."""
    found = _ERROR_LINE.match(line) or _PROTOBUF_ERROR.match(line)
    if found is None:
        return line.strip() if _CRASH.search(line) else None
    message = found.group(1).strip()
    if message.startswith('"'):
        message = message[1:-1] if message.endswith('"') and len(message) > 1 else message[1:]
    message = message.split("\\n")[0].strip()
    return None if any(noise in message for noise in _SAID_ELSEWHERE) else message[:MAX_MESSAGE]


def watch_log(log: Path, echo: Callable[[str], None], stop: threading.Event, period: float = 1.0) -> threading.Thread:
    """A thread that reads what the server adds to its log from now on and passes each error it
    has not said before to `echo` (a version that fails to load under --poll, a config edit that
    Triton cannot read, a model's failure), until `stop` is set."""
    def follow() -> None:
        told: set[str] = set()
        try:
            handle = open(log, "rb")
        except OSError:
            return
        with handle:
            handle.seek(0, os.SEEK_END)
            pending = b""
            while not stop.wait(period):
                pending += handle.read()
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    message = problem(line.decode("utf-8", "replace"))
                    if message and message not in told:
                        told.add(message)
                        echo(message)

    thread = threading.Thread(target=follow, name="serve-log", daemon=True)
    thread.start()
    return thread


def start_server(install: TritonInstall, repository: Path, ports: Ports, log: Path,
                 poll: int | None = None) -> subprocess.Popen:
    """The server as a child in a session of its own, its output in `log`, told to stop (SIGTERM,
    then SIGKILL from its watchdog) when this process ends however it ends (`poll`: see `command`),
    and stopped (SIGTERM, with a
    warning line) once one of its Python-backend stubs died (runtime.triton.stubs); its
    shared-memory regions named by this process and a token (`shm_prefix`, kept as the process's
    `shm_prefix`). InputError where the log or the binary cannot be used."""
    try:
        out = open(log, "wb")
    except OSError as error:
        raise InputError(f"--log {log}: cannot be written ({error.strerror or error}).") from None
    try:
        with out:
            regions = shm_prefix(os.getpid())
            line = command(install, repository, ports, poll, regions)
            process = subprocess.Popen(line, stdout=out, stderr=subprocess.STDOUT, env=server_environment(install),
                                       start_new_session=True, preexec_fn=_stop_with_parent)
    except OSError as error:
        raise InputError(f"{install.binary} cannot be started ({error.strerror or error}); {INSTALL_HINT}.") from None
    process.shm_prefix = regions  # type: ignore[attr-defined]
    process.watchdog = _watchdog(process.pid, regions)  # type: ignore[attr-defined]
    watch(process)
    return process


def _watchdog(pid: int, regions: str) -> subprocess.Popen | None:
    """`runtime/triton/watchdog.py` on the server `pid`, held by a pidfd opened here while it runs:
    it ends the server when this process ends without stopping it, SIGKILL after WATCHDOG_TIMEOUT_S
    where SIGTERM is not enough; None where it cannot be started (the kernel's SIGTERM at this
    process's death is then all)."""
    try:
        handle = os.pidfd_open(pid)
    except (OSError, AttributeError):
        return None
    try:
        return subprocess.Popen([sys.executable, "-I", str(Path(__file__).with_name("watchdog.py")), str(handle),
                                 str(pid), str(WATCHDOG_TIMEOUT_S), regions], pass_fds=(handle,),
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    except OSError:
        return None
    finally:
        os.close(handle)


def _release_watchdog(process: subprocess.Popen) -> None:
    """The server ended: its watchdog told so (its pipe closed) and waited for."""
    watchdog = getattr(process, "watchdog", None)
    if watchdog is None:
        return
    process.watchdog = None  # type: ignore[attr-defined]
    try:
        watchdog.stdin.close()
        watchdog.wait(timeout=KILL_WAIT_S)
    except (OSError, subprocess.TimeoutExpired):
        watchdog.kill()
        watchdog.wait()


def _stop_with_parent() -> None:
    """In the child, before it runs the server: the kernel sends it SIGTERM when its parent dies
    (Linux prctl PR_SET_PDEATHSIG), so a killed `runtime serve` leaves no server behind."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def stop_server(process: subprocess.Popen, timeout: float = STOP_TIMEOUT_S) -> None:
    """End a server this process started: SIGTERM, then SIGKILL to its process group (it was
    started in a session of its own) when it has not stopped within `timeout` seconds; its watchdog
    then released."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    _release_watchdog(process)
