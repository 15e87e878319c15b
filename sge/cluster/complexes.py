"""The load sensor's per-host complexes: written by sge/ge/loadsensor.py, created by
the installer, and read back from qhost by the agent and `status --cluster`."""

FREE_COMPLEX = "img_cache_free"   # MEMORY: bytes the cache may still take
ROOM_COMPLEX = "img_cache_room"   # MEMORY: what could be made free by eviction
TIME_COMPLEX = "img_sensor_time"  # INT: when the sensor last reported (a live host)
LIST_COMPLEX = "images"           # what the host holds, for status and the JSV
