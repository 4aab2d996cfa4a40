"""The Procfile `metrics` process's figures, read at each scrape or KEDA request.

- `queue_depth`: the figure KEDA scales a worker pool on, and each queue's oldest
  waiting message, read from the Redis broker through its public reads
  (tasks/broker/reads.py).
- `fleet_metrics`: the fleet's health (Redis up and its memory, oldest messages,
  workers per queue, dead letters, unfinished batches).
- `metrics_collector`: what every worker recorded in Redis (tasks/state/metrics.py).
- `golden_metrics`: the golden set's last scores.

Nothing here writes.
"""
