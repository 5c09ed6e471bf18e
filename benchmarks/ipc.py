"""IPC microbenchmark for the engine-core process's output channel: how long one step's message takes from
the engine process to the API process (encode, send, receive, decode), for each transport and encoding.

A step message carries every running sequence's new token: ``(request, index, token, logprobs,
finish_reason, stop_reason, error)`` tuples plus the engine's queue and KV-cache figures. The child process
(spawned, as the engine core is) sends ``--steps`` such messages of ``--seqs`` entries; the parent receives
and decodes them; the figure is the wall time per message, both processes busy.

    python benchmarks/ipc.py --seqs 256 --steps 2000
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import pickle
import time


def step_message(num_seqs: int, step: int) -> tuple:
    outputs = [(i, 0, (step * 7 + i) % 32000, None, None, None, None) for i in range(num_seqs)]
    return (outputs, (num_seqs, 0, num_seqs * 3, 4096))


def _pipe_sender(conn, encoding: str, num_seqs: int, steps: int) -> None:
    encode = pickle.dumps if encoding == "pickle" else __import__("msgspec").msgpack.encode
    for step in range(steps):
        conn.send_bytes(encode(step_message(num_seqs, step)))
    conn.close()


def _zmq_sender(address: str, encoding: str, num_seqs: int, steps: int) -> None:
    import zmq

    encode = pickle.dumps if encoding == "pickle" else __import__("msgspec").msgpack.encode
    socket = zmq.Context.instance().socket(zmq.PUSH)
    socket.connect(address)
    for step in range(steps):
        socket.send(encode(step_message(num_seqs, step)), copy=False)
    socket.close(linger=-1)


def run(transport: str, encoding: str, num_seqs: int, steps: int) -> float:
    """Microseconds per step message."""
    decode = pickle.loads if encoding == "pickle" else __import__("msgspec").msgpack.decode
    ctx = mp.get_context("spawn")
    if transport == "pipe":
        receiver, sender = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_pipe_sender, args=(sender, encoding, num_seqs, steps))
        proc.start()
        sender.close()
        receiver.poll(60)  # the child's start-up is not timed
        start = time.perf_counter()
        for _ in range(steps):
            decode(receiver.recv_bytes())
    else:
        import zmq

        socket = zmq.Context.instance().socket(zmq.PULL)
        port = socket.bind_to_random_port("tcp://127.0.0.1")
        proc = ctx.Process(target=_zmq_sender, args=(f"tcp://127.0.0.1:{port}", encoding, num_seqs, steps))
        proc.start()
        socket.poll(60_000)
        start = time.perf_counter()
        for _ in range(steps):
            decode(socket.recv(copy=False).buffer)
        socket.close()
    elapsed = time.perf_counter() - start
    proc.join()
    return elapsed / steps * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seqs", default="1,64,256", help="comma-separated sequences per step message")
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()
    print("| transport | encoding | seqs/step | us/step message |\n| --- | --- | ---: | ---: |")
    for num_seqs in map(int, args.seqs.split(",")):
        for transport, encoding in (("pipe", "pickle"), ("pipe", "msgspec"), ("zmq", "pickle"), ("zmq", "msgspec")):
            us = run(transport, encoding, num_seqs, args.steps)
            print(f"| {transport} | {encoding} | {num_seqs} | {us:.1f} |", flush=True)


if __name__ == "__main__":
    main()
