"""`tdet serve` / `tdet stop`: the local CPU tritonserver from the nvidia-pytriton wheel.

The wheel ships the binary and the python backend; this module assembles a backend directory
(python backend + its Python 3.x stub + our python-based `onnxruntime` backend), and starts the
server with this venv first on PATH, which is how the stub finds numpy<2, OpenCV and tdet.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from tdet.client.errors import UserError
from tdet.client.files import atomic_write
from tdet.client.ports import free_port, port_free


@dataclass(frozen=True)
class ServerInfo:
    pid: int
    http_port: int
    grpc_port: int
    metrics_port: int
    repository: str
    log: str

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"


def state_dir() -> Path:
    return Path(os.environ.get("TDET_CACHE", Path.home() / ".cache" / "tdet")) / "triton"


LOGS_KEPT = 20  # server logs of stopped servers kept in state_dir() (every free-port server writes a new one)


def prune_logs(folder: Path, keep: int = LOGS_KEPT) -> list[Path]:
    """Remove all but the newest `keep` server-*.log files in `folder` whose server is gone; -> the removed.
    A running server holds a shared flock on its log (taken before it started, inherited with the file), so
    its log is never removed however old."""
    dated = []
    for path in folder.glob("server-*.log"):
        try:
            dated.append((path.stat().st_mtime, path))
        except FileNotFoundError:
            pass  # pruned by another start meanwhile
    removed, idle = [], 0
    for _, path in sorted(dated, reverse=True):
        try:
            with open(path, "rb") as f:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fails while a server holds it
                idle += 1
                if idle > keep:
                    path.unlink()
                    removed.append(path)
        except BlockingIOError:
            continue  # a running server's
        except FileNotFoundError:
            continue  # pruned by another start meanwhile
    return removed


def _pytriton_root() -> Path:
    try:
        import pytriton
    except ImportError:
        raise FileNotFoundError("the local tritonserver comes from nvidia-pytriton: "
                                "pip install 'tdet[server]'") from None
    return Path(pytriton.__file__).parent / "tritonserver"


def _install(src: Path, dst: Path) -> None:
    """Copy src to dst unless identical. Temp file + rename: a running server may be executing the old
    stub (overwriting it in place fails with 'Text file busy'), and a half-copied file is never seen."""
    if dst.is_file() and dst.read_bytes() == src.read_bytes():
        return
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def backend_dir() -> Path:
    """<cache>/backends with python/ (from the wheel + stub for this Python) and onnxruntime/ (ours)."""
    root = _pytriton_root()
    ver = f"{sys.version_info.major}.{sys.version_info.minor}"
    dest = state_dir() / f"backends-py{ver}"
    py = dest / "python"
    py.mkdir(parents=True, exist_ok=True)
    for f in (root / "backends/python").iterdir():
        if f.is_file():
            _install(f, py / f.name)
    stub = root / "python_backend_stubs" / ver / "triton_python_backend_stub"
    if not stub.is_file():
        raise FileNotFoundError(f"no python backend stub for Python {ver} in {root}")
    _install(stub, py / "triton_python_backend_stub")
    ort = dest / "onnxruntime"
    ort.mkdir(exist_ok=True)
    _install(Path(str(resources.files("tdet.ensembles") / "backends/onnxruntime/model.py")), ort / "model.py")
    return dest


DALI_BACKEND = re.compile(r'^backend:\s*"dali"', re.M)  # a config.pbtxt's top-level backend field


def check_repository(repository: Path) -> list[str]:
    if not repository.is_dir():
        raise FileNotFoundError(f"model repository not found: {repository}")
    models = sorted(p.name for p in repository.iterdir() if (p / "config.pbtxt").is_file())
    if not models:
        raise UserError(f"{repository} holds no models (no */config.pbtxt): build it with `tdet repo build`")
    dali = [m for m in models if DALI_BACKEND.search((repository / m / "config.pbtxt").read_text())]
    if dali and not (_pytriton_root() / "backends" / "dali").is_dir():
        raise UserError(f"{repository}: {', '.join(dali)} use Triton's DALI backend (--preprocess dali), which the "
                        "local tritonserver (nvidia-pytriton) does not have: serve it with the NGC tritonserver image "
                        "(docker compose), or rebuild with --preprocess python")
    return models


def server_env() -> dict[str, str]:
    root = _pytriton_root()
    libs = root.parent.parent / "nvidia_pytriton.libs"
    env = dict(os.environ)
    # the stub's embedded Python finds packages through `python3` on PATH: put this venv first
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(libs), libdir, env.get("LD_LIBRARY_PATH", "")) if p)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads starve the other steps
    return env


MODEL_CONTROL_MODES = ("none", "poll", "explicit")


def start(repository: Path, *, http_port: int = 8000, grpc_port: int = 8001, metrics_port: int = 8002,
          log: Path | None = None, timeout_s: float = 180.0, verbose: bool = False,
          model_control_mode: str = "none") -> tuple[subprocess.Popen, ServerInfo]:
    """Start tritonserver on 127.0.0.1 and wait until it is READY. Raises with the log tail on failure.

    model_control_mode: Triton's. "none": the repository as it is at start; "poll": models added,
    changed or removed later (e.g. by `tdet repo build` into it) are loaded/unloaded within seconds;
    "explicit": every model is loaded at start, later ones through the load/unload API."""
    if model_control_mode not in MODEL_CONTROL_MODES:
        raise UserError(f"--model-control-mode must be one of {MODEL_CONTROL_MODES}, got {model_control_mode!r}")
    repository = repository.resolve()
    check_repository(repository)
    # 0 means any free port (tests, several servers side by side)
    http_port, grpc_port, metrics_port = (p or free_port() for p in (http_port, grpc_port, metrics_port))
    for port, what in ((http_port, "--http-port"), (grpc_port, "--grpc-port"), (metrics_port, "--metrics-port")):
        if not port_free(port):
            raise UserError(f"port {port} ({what}) is already in use: stop what holds it or pick another port")
    if log is None:  # the default place, where the logs of free-port servers pile up
        log = state_dir() / f"server-{http_port}.log"
        prune_logs(log.parent)
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [str(_pytriton_root() / "bin/tritonserver"), f"--model-repository={repository}",
           f"--backend-directory={backend_dir()}", f"--http-port={http_port}", f"--grpc-port={grpc_port}",
           f"--metrics-port={metrics_port}", "--http-address=127.0.0.1", "--grpc-address=127.0.0.1",
           "--metrics-address=127.0.0.1", "--strict-readiness=true", "--exit-on-error=true",
           "--backend-config=python,shm-default-byte-size=16777216",
           "--backend-config=python,shm-growth-byte-size=16777216", f"--log-verbose={1 if verbose else 0}",
           f"--model-control-mode={model_control_mode}"]
    if model_control_mode == "explicit":
        cmd.append("--load-model=*")
    elif model_control_mode == "poll":
        cmd.append("--repository-poll-secs=2")
    with open(log, "wb") as logf:
        fcntl.flock(logf, fcntl.LOCK_SH)  # held by the server's inherited descriptor: prune_logs leaves it
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=server_env(), start_new_session=True)
    info = ServerInfo(proc.pid, http_port, grpc_port, metrics_port, str(repository), str(log))
    try:
        wait_ready(info, proc, timeout_s)
    except BaseException:
        stop_process(proc.pid)
        raise
    return proc, info


def wait_ready(info: ServerInfo, proc: subprocess.Popen | None, timeout_s: float) -> None:
    """Poll /v2/health/ready. UserError naming each model that failed to load (with the model's own error
    line) if the server exits while loading; TimeoutError with the log's error lines if it never gets READY."""
    deadline = time.monotonic() + timeout_s
    url = f"http://{info.http_url}/v2/health/ready"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise UserError(f"tritonserver exited with status {proc.returncode} while loading "
                            f"{info.repository}:\n{load_errors(info.log)}\nfull log: {info.log}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"tritonserver not ready after {timeout_s:.0f}s; log:\n{load_errors(info.log)}")


_FAILED_LOAD = re.compile(r"failed to load '([^']+)' version \d+: (.*)")
_POLL_FAILED = re.compile(r"Poll failed for model directory '([^']+)': ([^\"]*)")
_PROTOBUF = re.compile(r"Error parsing text-format inference\.ModelConfig: (.*)")
# start-up lines of a CPU-only machine, not the cause of anything
_NOISE = ("CudaDriverHelper", "NVML", "DCGM", "failed to load all models", "Unable to find shared library",
          "pinned memory pool")


def load_errors(log: str, lines: int = 25) -> str:
    """What went wrong while loading, from the server log, the models' own errors first: one line per
    model that failed to load (e.g. "m_engine: InvalidProtobuf: ... Protobuf parsing failed.", without the
    stub's traceback) or whose config.pbtxt does not parse (with the parser's message); then the other
    error lines, without the GPU/driver start-up noise of a CPU-only machine."""
    try:
        text = Path(log).read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    failed: dict[str, str] = {}
    parse_error = ""
    for line in text:
        if m := _PROTOBUF.search(line):
            parse_error = m.group(1).strip()
        if m := _POLL_FAILED.search(line):
            why = m.group(2).strip()
            failed.setdefault(m.group(1), f"{why}: {parse_error}" if parse_error else why)
            parse_error = ""
        elif m := _FAILED_LOAD.search(line):
            # the log escapes newlines: the first line is the error, "\n\nAt:\n..." the stub's traceback
            first = m.group(2).rstrip('"').split("\\n")[0].strip()
            failed.setdefault(m.group(1), first.removeprefix("Internal: ").removeprefix("Invalid argument: "))
    if failed:
        return "\n".join(f"  model {name!r} failed to load: {why}" for name, why in failed.items())
    errors = [line for line in text
              if (line[:1] == "E" or "error" in line.lower()) and not any(n in line for n in _NOISE)]
    return "\n".join((errors or text)[-lines:])


def is_tritonserver(pid: int) -> bool:
    """Whether `pid` is a live tritonserver (a pidfile can outlive its process and the pid be reused)."""
    try:
        return b"tritonserver" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def step_processes(server_pid: int) -> dict[str, list]:
    """The python-backend stub processes of a running tritonserver by the model they serve (the model directory in
    the stub's command line, `<repo>/<model>/<version>/model.*`): psutil.Process objects; stubs that exit while
    being read are left out."""
    import psutil

    out: dict[str, list] = {}
    for child in psutil.Process(server_pid).children(recursive=True):
        try:
            cmd = child.cmdline()
        except psutil.Error:
            continue
        if len(cmd) > 1:
            out.setdefault(Path(cmd[1]).parent.parent.name, []).append(child)
    return out


def stop_process(pid: int, timeout_s: float = 30.0) -> None:
    """SIGTERM the server's process group (stubs included), SIGKILL if it does not go."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        try:  # reap it if it is our child
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def records_dir() -> Path:
    """One JSON record per detached server (`tdet serve --detach`), named by its HTTP port."""
    return state_dir() / "servers"


def write_record(info: ServerInfo) -> Path:
    path = records_dir() / f"{info.http_port}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, json.dumps(asdict(info)))  # `tdet stop` elsewhere never reads half a record


def running_servers() -> list[tuple[Path, ServerInfo]]:
    """The recorded detached servers that are still running, by HTTP port; records of servers that are
    gone (or whose pid now belongs to something else) are removed. Reads the single record older
    versions wrote (state_dir()/server.json) too."""
    paths = sorted(records_dir().glob("*.json")) if records_dir().is_dir() else []
    paths += [p for p in [state_dir() / "server.json"] if p.is_file()]
    out = []
    for path in paths:
        try:
            info = ServerInfo(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            info = None
        if info is None or not is_tritonserver(info.pid):
            path.unlink(missing_ok=True)
            continue
        out.append((path, info))
    return sorted(out, key=lambda r: r[1].http_port)
