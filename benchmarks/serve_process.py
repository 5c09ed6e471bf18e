"""The benchmarks' server: start ``minivllm serve`` on a free port and wait until it is ready, stop it, and
record it with py-spy (serve.py, loadtest.py, hostile.py, replicas.py, structured.py)."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time

import httpx

MODEL_NAME = "bench"  # the name the server answers to


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(port: int, serve_args: list[str], timeout: float) -> subprocess.Popen:
    """``minivllm serve SERVE_ARGS --port PORT`` (uvicorn's log at warning, in a session of its own, so a Ctrl-C
    here reaches it only through :func:`stop_server`), returned once its /health answers 200; SystemExit if it
    exits first or is not up in ``timeout`` seconds (then it is stopped)."""
    cmd = [sys.executable, "-m", "minivllm.cli", "serve", *serve_args, "--port", str(port)]
    cmd += ["--uvicorn-log-level", "warning"]
    print("server:", " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd, start_new_session=True)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with code {proc.returncode}")
        if time.monotonic() > deadline:
            stop_server(proc)
            raise SystemExit("the server did not come up in time")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.5)


def start_server(model_path: str, port: int, args, extra: list[str]) -> subprocess.Popen:
    """serve.py's and loadtest.py's server: ``model_path`` served as MODEL_NAME with their flags."""
    serve_args = [model_path, "--served-model-name", MODEL_NAME, "--max-model-len", str(args.max_model_len)]
    return launch(port, [*serve_args, "--device", args.device, *extra], args.startup_timeout)


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_py_spy(pid: int, path: str) -> subprocess.Popen | None:
    """``py-spy record`` of the server process (not its engine process) until SIGINT; None without py-spy."""

    if shutil.which("py-spy") is None:
        print("py-spy is not installed: no profile", flush=True)
        return None
    return subprocess.Popen(
        ["py-spy", "record", "--pid", str(pid), "--format", "raw", "--rate", "100", "--output", path, "--nonblocking"]
    )
