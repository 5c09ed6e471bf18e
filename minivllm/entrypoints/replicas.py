"""Data-parallel serving on one host: ``minivllm serve --data-parallel-size N``.

N replicas of the whole server, each a ``minivllm serve`` process with its own engine (one GPU each, or
on the CPU an equal share of the cores), listen on 127.0.0.1 at ``port + 1 .. port + N`` (the router's own
metrics at ``port + N + 1``); in front of
them, on ``host:port``, runs a real router, sglang-router (``pip install 'minivllm[router]'``), which
balances OpenAI requests over the replicas (``cache_aware`` by default: a prompt goes where its prefix was
served before unless that replica is much busier, so prefix-cache hits survive the spreading), checks
their ``/health`` and retries a request that could not reach one. This is the recipe of README's
"Replicas behind a router", started for you: a replica is exactly the single-engine server, so there is
nothing new to reason about, and the same router fronts replicas on several hosts.

This process only supervises. A replica that dies is reported and left to the router, which stops
sending it requests; SIGTERM or SIGINT drains the replicas first (each aborts its requests, whose streams
end properly through the router) and then stops the router; the router dying ends everything.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request

logger = logging.getLogger(__name__)

POLICIES = ("cache_aware", "round_robin", "power_of_two", "random")
STARTUP_TIMEOUT_S = 600.0  # a replica loads its model before /health answers (big models take minutes)


def replica_environments(n: int, tensor_parallel_size: int, device: str) -> list[dict[str, str]]:
    """Per replica, what its environment adds: its GPUs (``CUDA_VISIBLE_DEVICES``), or on the CPU its share
    of the cores (``OMP_NUM_THREADS``), so that N replicas do not fight over the same cores."""
    import torch

    if device != "cpu" and torch.cuda.is_available():
        count = torch.cuda.device_count()
        if n * tensor_parallel_size > count:
            raise ValueError(
                f"--data-parallel-size {n} x --tensor-parallel-size {tensor_parallel_size} needs "
                f"{n * tensor_parallel_size} GPUs, and {count} are visible"
            )
        tp = tensor_parallel_size
        return [{"CUDA_VISIBLE_DEVICES": ",".join(str(i * tp + r) for r in range(tp))} for i in range(n)]
    threads = max(1, (os.cpu_count() or 1) // (n * tensor_parallel_size))
    return [{"OMP_NUM_THREADS": str(threads)} for _ in range(n)]


# serve's options that the launcher sets for each replica itself
_OWN_OPTIONS = ("--host", "--port", "--data-parallel-size", "-dp", "--router-policy")


def replica_arguments(serve_argv: list[str]) -> list[str]:
    """``minivllm serve``'s arguments (after ``serve``) less the host, port, data-parallel size and router
    policy, which belong to the router: every replica gets the rest as given."""
    out, skip = [], False
    for arg in serve_argv:
        if skip:
            skip = False
        elif arg in _OWN_OPTIONS:
            skip = True  # its value follows
        elif not arg.startswith(tuple(o + "=" for o in _OWN_OPTIONS)):
            out.append(arg)
    return out


def router_command(host: str, port: int, worker_urls: list[str], policy: str) -> list[str]:
    """The router on ``host:port``; its own Prometheus metrics on 127.0.0.1 at the port after the last
    replica's (its default, 29000, would clash between two such servers on one host)."""
    return [
        sys.executable,
        "-m",
        "sglang_router.launch_router",
        "--host",
        host,
        "--port",
        str(port),
        "--policy",
        policy,
        "--worker-urls",
        *worker_urls,
        "--log-level",
        "warn",
        "--prometheus-host",
        "127.0.0.1",
        "--prometheus-port",
        str(port + len(worker_urls) + 1),
    ]


def serve_replicas(
    replica_args: list[str],
    n: int,
    host: str,
    port: int,
    policy: str = "cache_aware",
    tensor_parallel_size: int = 1,
    device: str = "auto",
) -> int:
    """Start ``n`` replicas (``minivllm serve`` with ``replica_args``, which name no host, port or
    data-parallel size), then the router; supervise until a signal or the router's end. Returns the exit
    status."""
    try:
        import sglang_router  # noqa: F401  (only to fail early with the install command)
    except ImportError:
        raise ValueError(
            "--data-parallel-size needs the router: pip install 'minivllm[router]' (sglang-router)"
        ) from None
    if policy not in POLICIES:
        raise ValueError(f"unknown router policy {policy!r}; known: {', '.join(POLICIES)}")
    urls = [f"http://127.0.0.1:{port + 1 + i}" for i in range(n)]
    replicas: list[subprocess.Popen] = []
    router: subprocess.Popen | None = None
    stopping = False

    def stop(signum, frame):
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for i, env in enumerate(replica_environments(n, tensor_parallel_size, device)):
            command = [
                sys.executable,
                "-m",
                "minivllm.cli",
                "serve",
                *replica_args,
                "--host",
                "127.0.0.1",
                "--port",
                str(port + 1 + i),
            ]
            replicas.append(subprocess.Popen(command, env={**os.environ, **env}))
            logger.info(
                "replica %d: pid %d on %s (%s)",
                i,
                replicas[-1].pid,
                urls[i],
                ", ".join(f"{k}={v}" for k, v in env.items()),
            )
        if not _wait_healthy(replicas, urls, lambda: stopping):
            return 1
        router = subprocess.Popen(router_command(host, port, urls, policy))
        logger.info("router (sglang-router, policy %s): pid %d on http://%s:%d", policy, router.pid, host, port)
        reported = set()
        while not stopping and router.poll() is None:
            for i, proc in enumerate(replicas):
                if proc.poll() is not None and i not in reported:
                    reported.add(i)
                    logger.error(
                        "replica %d (%s) exited with status %s; the router routes around it",
                        i,
                        urls[i],
                        proc.returncode,
                    )
            time.sleep(0.2)
        if router.poll() is not None and not stopping:
            logger.error("the router exited with status %s; stopping the replicas", router.returncode)
            return 1
        return 0
    finally:
        _drain(replicas, router)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def replica_pid(port: int) -> int:
    """The pid of the `minivllm serve` replica started with ``--port PORT`` (not the launcher; Linux's /proc):
    what a failover test or benchmark kills. LookupError if none runs."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if b"serve" in args and str(port).encode() in args and b"--data-parallel-size" not in args:
            return int(pid)
    raise LookupError(port)


def _wait_healthy(replicas: list[subprocess.Popen], urls: list[str], stopping) -> bool:
    """Wait until every replica's /health answers 200; False if one exits first, or on a signal."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    pending = set(range(len(urls)))
    while pending:
        for i in list(pending):
            if replicas[i].poll() is not None:
                logger.error("replica %d exited with status %s before it was ready", i, replicas[i].returncode)
                return False
            if _healthy(urls[i]):
                pending.discard(i)
        if stopping() or time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _drain(replicas: list[subprocess.Popen], router: subprocess.Popen | None) -> None:
    """SIGTERM the replicas (each aborts its requests and exits within its grace period), then the router."""
    for proc in replicas:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in replicas:
        _reap(proc)
    if router is not None and router.poll() is None:
        router.send_signal(signal.SIGTERM)
        _reap(router)


def _reap(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
