"""Image-name rules, shared by the catalog, the JSV, the prolog and the load sensor.

One regex decides what a name may be, so a name the JSV accepts is exactly a name
the prolog will stage and the sensor will report: nothing that can walk out of the
cache directory (`../x`, `/abs`), split a Grid Engine request (`,` space) or act
as an operator in one (`| & !`).
"""
from __future__ import annotations

import re

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
# Prefix of the per-image BOOL complex the load sensor sets.
COMPLEX_PREFIX = "img_"
# Complexes the kit defines itself (sge/ge/loadsensor.py): an image named `cache_free`
# would get the warm complex img_cache_free, clashing with the free-space one in
# `qconf -sc` and in every sensor report (found by the hostile-name corpus).
RESERVED_COMPLEXES = ("img_cache_free", "img_cache_room", "img_sensor_time")


def is_valid_name(name: object) -> bool:
    return isinstance(name, str) and NAME_RE.match(name) is not None


def explain_invalid(name: object) -> str:
    """One line saying why `name` is not an image name (for the JSV and the CLI)."""
    if not isinstance(name, str) or name == "":
        return "an image name must not be empty"
    shown = name if len(name) <= 40 else name[:40] + "..."
    if len(name) > 64:
        return f"image name {shown!r} is longer than 64 characters"
    return (f"image name {shown!r} is invalid: use letters, digits, '.', '_' and '-' "
            f"only, starting with a letter or digit")


def warm_complex(name: str) -> str:
    """The BOOL complex that says `name` is cached on a host.

    Grid Engine complex names allow `.` and `-` (sge_types(5)), so the image name is
    kept as is; lower-cased because Grid Engine compares complex names without case,
    and the catalog rejects two images that differ only in case.
    """
    return COMPLEX_PREFIX + name.lower()
