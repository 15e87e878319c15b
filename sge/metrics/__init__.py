"""Per-host metrics for Prometheus' node_exporter (its textfile collector).

The processes that see an event (the prolog, the staging code, eviction) append one
short line to `<cache>/metrics/events` (events.py): no metrics library, one write.
The node agent's unprivileged server, which cannot open root's files, keeps its
counts in a record of its own (agent_counts.py). Every sensor cycle, the load sensor
(root) folds the new lines into counters kept in `<cache>/metrics/state.json`
(event_log.py, fold.py, state.py) and writes `sge_image.prom` into the directory
`metrics.textfile_dir` names (textfile.py, exposition.py). Metric names and help
texts: families.py.
"""
