"""Event kinds and packed keys shared by the engine and its parts.

Why a module of its own: the engine's parts (parallel jobs, cache pressure)
push the same events and must agree on their order.
"""
# Event kinds; at equal times a lower kind runs first (a task that ends at the
# instant of a scheduling run frees its slot for that run).
FINISH, DL, WINDOW, SCHED, PREWARM, PRESSURE = 0, 1, 2, 3, 4, 5

PAIR_BITS = 24  # (host, image) pairs packed in one int
PAIR_MASK = (1 << PAIR_BITS) - 1
