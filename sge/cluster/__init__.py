"""What the Grid Engine adapters (sge/ge/) and the node agent (sge/agent/) both need of
the cluster: its hosts as qhost reports them, the load sensor's complex names, the
hooks' one option. It sits below both so that every import points one way:
ge -> agent -> cluster -> core (tests/test_layers.py)."""
