"""Units and the time that never comes, shared by every part of the model.

Why a module of its own: the job stream sizes images in GB and the model's
caches and networks need them too, while the model names the job stream's
``Job`` in its types; constants kept here let both import downwards only.
"""
GB = 1e9
GBIT = 1e9 / 8.0  # bytes per second in one Gbit/s
INF = float("inf")
