"""Tensor parallelism: the group handle layers shard over, the process groups, the executors that run the
model on one or several ranks, and the batch shipped to the other ranks each step."""
