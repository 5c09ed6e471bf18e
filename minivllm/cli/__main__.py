"""``python -m minivllm.cli``: the ``minivllm`` command."""

from minivllm.cli import main

main()
