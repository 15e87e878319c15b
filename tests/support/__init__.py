"""What the tests and the benchmarks (bench/) share: real servers (HTTP with faults,
an OCI registry, S3), the node agent's test world, the Grid Engine lab cluster's
handle and the kit installed on it, and small data helpers. Fixtures stay in the
conftest files; nothing here is a fixture, so a benchmark imports no conftest."""
