"""Built-in scheduler policies."""

from minivllm.core.hookspecs import hookimpl


@hookimpl
def register_schedulers(register):
    register("fcfs", "minivllm.plugins.schedulers.fcfs:FCFSScheduler")
    register("chunked", "minivllm.plugins.schedulers.chunked:ChunkedPrefillScheduler")
