"""Site settings and image catalog: YAML in, validated `Settings` out.

Every error names the file, the line and what is wrong; unknown keys are errors,
because a misspelt `max_sise:` that is silently ignored fills a node's disk.

The prolog and `sge-image path` run on every job, and importing PyYAML alone costs
more than a bare interpreter start, so a validated copy of the settings is kept as
JSON beside the config file (`.NAME.snapshot.json`) and used while the YAML files
it came from are unchanged (same mtime, size and inode).

The validated values become read-only sections with typed attributes
(`settings.fetch.read_timeout`); SCHEMA holds every default, and nothing else does.
"""
from __future__ import annotations

import json
import os

from .errors import ConfigError
from .names import RESERVED_COMPLEXES, explain_invalid, is_valid_name, warm_complex

TYPE_CHECKING = False  # not typing's: it costs ~2 ms on a warm path (BENCHMARKS.md)
if TYPE_CHECKING:
    from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

DEFAULT_PATH = "/etc/sge-image/config.yaml"
SNAPSHOT_VERSION = 9  # 3: cache.room_wait; 4: the agent section; 5: no log.level;
                      # 6: agent bounds; 7: runtime presets, starter.binds; 8: metrics;
                      # 9: agent.upload_rate

# section -> key -> (kind, default). Kinds are checked by _coerce.
SCHEMA: Dict[str, Dict[str, Tuple[str, Any]]] = {
    "cache": {
        "root": ("path", "/var/cache/sge-image"),
        "max_size": ("size", "200G"),
        "low_water": ("share", "80%"),
        "lock_wait": ("seconds", 7200),
        "min_free": ("size", "1G"),
        "evict_grace": ("seconds", 60),
        "room_wait": ("seconds", 300),
    },
    "fetch": {
        "connect_timeout": ("seconds", 10),
        "read_timeout": ("seconds", 60),
        "retries": ("int", 3),
        "backoff": ("seconds", 2),
        "backoff_max": ("seconds", 60),
        "progress_interval": ("seconds", 10),
        "low_speed_limit": ("size", "64K"),
        "low_speed_time": ("seconds", 60),
        "command_timeout": ("seconds", 3600),
    },
    "log": {
        "file": ("optpath", None),
    },
    "jsv": {
        "strict": ("bool", False),
        "timeout": ("seconds", 5),
    },
    "prolog": {
        "max_reschedules": ("int", 3),
    },
    "sensor": {
        "list_complex": ("bool", False),
        "report_inflight": ("bool", True),
    },
    # The starter method's container runtime (sge/runtimes.py): a preset name or an
    # argv template; `binds` are site directories (SRC[:DST]) every container shows.
    "starter": {
        "runtime": ("runtime", ["apptainer"]),
        "binds": ("binds", []),
    },
    # The node agent (sge/agent/): serves verified blobs to peers, stages parallel jobs.
    "agent": {
        "enabled": ("bool", True),
        "peers": ("bool", True),
        # Below 1024: only root can bind it, so no local user can stand in for the agent.
        "port": ("port", 645),
        "bind": ("text", ""),
        # The server's own system user (install creates it): no other process shares it.
        "user": ("text", "sge-image-agent"),
        "upload_slots": ("int", 4),
        "max_connections": ("int", 32),
        "max_per_address": ("int", 8),
        "header_timeout": ("seconds", 10),
        "idle_timeout": ("seconds", 30),
        "upload_min_rate": ("size", "1M"),
        # Bytes a second all uploads to peers send together (0: no cap): leaves the
        # host's link to its jobs. At least upload_slots x upload_min_rate (checked).
        "upload_rate": ("rate", 0),
        # Every exchange with another host's agent ends by this (connect + whole head).
        "exchange_deadline": ("seconds", 30),
        # A pull's whole time on peers; then the catalog's sources.
        "peer_budget": ("seconds", 900),
        "trust": ("trust", "cluster"),
        "key_file": ("path", "agent.key"),
        "seed_wait": ("seconds", 600),
        "pe_wait": ("seconds", 900),
        "live_window": ("seconds", 300),
        "qhost": ("argv", ["qhost"]),
    },
    # Per-host metrics for node_exporter's textfile collector (sge/metrics/): off
    # while empty; `{host}` expands as in cache.root.
    "metrics": {
        "textfile_dir": ("offpath", ""),
    },
}
TOP_KEYS = set(SCHEMA) | {"catalog", "images", "sources"}
# An entry's own keys; each source that takes options adds its name (sge/fetch).
IMAGE_KEYS = {"url", "sha256", "size", "description", "format"}


class Section:
    """The read-only settings of one SCHEMA section, its keys as attributes. A key
    missing from `values` takes its SCHEMA default (tests build partial sections)."""

    __slots__: Tuple[str, ...] = ()
    NAME = ""

    def __init__(self, values: Mapping[str, Any]) -> None:
        schema = SCHEMA[self.NAME]
        for key in self.__slots__:
            value = values[key] if key in values else _coerce(*schema[key])
            # a list from YAML or the JSON snapshot: a tuple, so that nothing edits it
            object.__setattr__(self, key, tuple(value) if isinstance(value, list) else value)

    def __setattr__(self, key: str, value: object) -> None:
        raise AttributeError(f"settings are read-only ({self.NAME}.{key})")

    def __delattr__(self, key: str) -> None:
        raise AttributeError(f"settings are read-only ({self.NAME}.{key})")

    def as_dict(self) -> Dict[str, Any]:
        return {key: getattr(self, key) for key in self.__slots__}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.as_dict()!r})"


class CacheSettings(Section):
    NAME = "cache"
    __slots__ = tuple(SCHEMA[NAME])
    root: str
    max_size: int
    low_water: float
    lock_wait: float
    min_free: int
    evict_grace: float
    room_wait: float


class FetchSettings(Section):
    NAME = "fetch"
    __slots__ = tuple(SCHEMA[NAME])
    connect_timeout: float
    read_timeout: float
    retries: int
    backoff: float
    backoff_max: float
    progress_interval: float
    low_speed_limit: int
    low_speed_time: float
    command_timeout: float


class LogSettings(Section):
    NAME = "log"
    __slots__ = tuple(SCHEMA[NAME])
    file: Optional[str]


class JsvSettings(Section):
    NAME = "jsv"
    __slots__ = tuple(SCHEMA[NAME])
    strict: bool
    timeout: float


class PrologSettings(Section):
    NAME = "prolog"
    __slots__ = tuple(SCHEMA[NAME])
    max_reschedules: int


class SensorSettings(Section):
    NAME = "sensor"
    __slots__ = tuple(SCHEMA[NAME])
    list_complex: bool
    report_inflight: bool


class StarterSettings(Section):
    NAME = "starter"
    __slots__ = tuple(SCHEMA[NAME])
    runtime: Tuple[str, ...]
    binds: Tuple[str, ...]


class AgentSettings(Section):
    NAME = "agent"
    __slots__ = tuple(SCHEMA[NAME])
    enabled: bool
    peers: bool
    port: int
    bind: str
    user: str
    upload_slots: int
    max_connections: int
    max_per_address: int
    header_timeout: float
    idle_timeout: float
    upload_min_rate: int
    upload_rate: int     # bytes/s for all uploads together; 0: no cap
    exchange_deadline: float
    peer_budget: float
    trust: Union[str, Tuple[str, ...]]   # "cluster" or hosts, addresses and networks
    key_file: str
    seed_wait: float
    pe_wait: float
    live_window: float
    qhost: Tuple[str, ...]


class MetricsSettings(Section):
    NAME = "metrics"
    __slots__ = tuple(SCHEMA[NAME])
    textfile_dir: str


SECTIONS = (CacheSettings, FetchSettings, LogSettings, JsvSettings, PrologSettings,
            SensorSettings, StarterSettings, AgentSettings, MetricsSettings)


class Image:
    """One catalog entry. `key` names its cache identity (the sha256 of its content)."""

    __slots__ = ("name", "urls", "sha256", "size", "description", "options", "format")

    def __init__(self, name: str, urls: Iterable[str], sha256: Optional[str] = None,
                 size: Optional[int] = None, description: str = "",
                 options: Optional[Dict[str, Dict[str, Any]]] = None,
                 format: Optional[str] = None) -> None:
        self.name = name
        self.urls = list(urls)
        self.sha256 = sha256
        self.size = size
        self.description = description
        self.options: Dict[str, Dict[str, Any]] = options or {}
        # `sif` or `squashfs` when the catalog says so: the JSV then refuses at qsub a
        # job whose runtime cannot run it (sge/runtimes.py)
        self.format = format

    @property
    def complex(self) -> str:
        return warm_complex(self.name)

    @property
    def pin(self) -> Optional[str]:
        """Identity of an entry that has no sha256 but a source that pins one
        (`oras://r/x@sha256:...`): the first such pin, else None."""
        for url in self.urls:
            if "@sha256:" in url:
                return url.rsplit("@sha256:", 1)[1]
        return None

    def to_json(self) -> Dict[str, Any]:
        return {"urls": self.urls, "sha256": self.sha256, "size": self.size,
                "description": self.description, "options": self.options,
                "format": self.format}

    @classmethod
    def from_json(cls, name: str, d: Mapping[str, Any]) -> Image:
        return cls(name, d["urls"], d["sha256"], d["size"], d["description"], d["options"],
                   d.get("format"))

    def __repr__(self) -> str:
        return f"Image({self.name!r}, sha256={self.sha256 and self.sha256[:12]!r})"


class Settings:
    """Validated settings: one read-only section per SCHEMA section (`settings.cache`,
    `settings.fetch`, ...), the site-wide `sources` options, and `images` (name -> Image)."""

    def __init__(self, values: Mapping[str, Mapping[str, Any]], images: Dict[str, Image],
                 path: Optional[str] = None,
                 sources: Optional[Dict[str, Any]] = None) -> None:
        self.cache = CacheSettings(values.get("cache", {}))
        self.fetch = FetchSettings(values.get("fetch", {}))
        self.log = LogSettings(values.get("log", {}))
        self.jsv = JsvSettings(values.get("jsv", {}))
        self.prolog = PrologSettings(values.get("prolog", {}))
        self.sensor = SensorSettings(values.get("sensor", {}))
        self.starter = StarterSettings(values.get("starter", {}))
        self.agent = AgentSettings(values.get("agent", {}))
        self.metrics = MetricsSettings(values.get("metrics", {}))
        self.images = images
        self.path = path
        self.sources: Dict[str, Any] = sources or {}
        # [path, mtime, size, inode] of the files these came from
        self.stamps: List[List[Any]] = []

    def is_stale(self) -> bool:
        """True once a file these settings came from has changed (long-lived hooks
        such as the load sensor and the JSV reload then)."""
        try:
            return any(_stamp(s[0]) != list(s) for s in self.stamps)
        except OSError:
            return True

    @property
    def cache_root(self) -> str:
        return expand_root(self.cache.root)

    def image(self, name: str) -> Image:
        from .errors import UnknownImage
        if not is_valid_name(name):
            raise UnknownImage(explain_invalid(name))
        try:
            return self.images[name]
        except KeyError:
            pass
        hint = _nearest(name, self.images)
        raise UnknownImage(
            f"image {name!r} is not in the catalog{hint}; `sge-image status --catalog` "
            f"lists the available images")

    def to_json(self) -> Dict[str, Any]:
        values = {sec.NAME: getattr(self, sec.NAME).as_dict() for sec in SECTIONS}
        return {"values": values, "sources": self.sources,
                "images": {n: i.to_json() for n, i in self.images.items()}}

    @classmethod
    def from_json(cls, d: Mapping[str, Any], path: str) -> Settings:
        images = {n: Image.from_json(n, v) for n, v in d["images"].items()}
        return cls(d["values"], images, path, d["sources"])


def expand_root(root: str) -> str:
    """`{host}` in cache.root becomes the short host name, so one shared config can
    give each exec host (or each simulated host in tests) its own cache."""
    if "{host}" in root:
        import socket  # only for {host}: socket costs a waiter's start-up 1.5-2 ms
        root = root.replace("{host}", socket.gethostname().split(".")[0])
    return root


def config_path(explicit: Optional[str] = None) -> str:
    return explicit or os.environ.get("SGE_IMAGE_CONFIG") or DEFAULT_PATH


def load(path: Optional[str] = None, use_snapshot: bool = True) -> Settings:
    """Load and validate settings; `path` as `config_path` resolves it."""
    path = os.path.abspath(config_path(path))
    if use_snapshot:
        settings = _read_snapshot(path)
        if settings is not None:
            return settings
    settings, sources = _load_yaml(path)
    settings.stamps = [_stamp(p) for p in sources]
    if use_snapshot:
        _write_snapshot(path, settings, sources)
    return settings


def prepare_snapshot(path: Optional[str] = None) -> None:
    """Make sure a fresh snapshot exists, parsing the YAML in a child process.

    For long-lived hooks (the load sensor): a YAML parse of a 10,000-image catalog
    leaves ~50 MB of fragmented heap behind, while loading the snapshot does not.
    """
    path = os.path.abspath(config_path(path))
    if _read_snapshot(path) is not None:
        return
    import subprocess
    import sys
    subprocess.run([sys.executable, "-I", "-c", "import sys; from sge import config; "
                    "config.load(sys.argv[1])", path],
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=300)


# ---------------------------------------------------------------- snapshot

def _snapshot_path(path: str) -> str:
    d, base = os.path.split(path)
    return os.path.join(d, f".{base}.snapshot.json")


def _stamp(path: str) -> List[Any]:
    st = os.stat(path)
    return [path, st.st_mtime_ns, st.st_size, st.st_ino]


def _read_snapshot(path: str) -> Optional[Settings]:
    snap = _snapshot_path(path)
    try:
        opened = os.open(snap, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    fd: Optional[int] = opened  # None once the file object owns it
    try:
        st = os.fstat(opened)
        # A snapshot someone else could have written must not steer a root prolog.
        if st.st_uid != os.stat(path).st_uid or st.st_mode & 0o022:
            return None
        with os.fdopen(opened, "rb") as f:
            fd = None
            data = json.loads(f.read())
        if data.get("version") != SNAPSHOT_VERSION:
            return None
        for stamp in data["sources"]:
            if _stamp(stamp[0]) != stamp:
                return None
        settings = Settings.from_json(data["settings"], path)
        settings.stamps = data["sources"]
        return settings
    except (OSError, ValueError, KeyError, TypeError):
        return None
    finally:
        if fd is not None:
            os.close(fd)


def _write_snapshot(path: str, settings: Settings, sources: List[str]) -> None:
    from .fsutil import atomic_write
    data = {"version": SNAPSHOT_VERSION, "sources": settings.stamps,
            "settings": settings.to_json()}
    try:
        atomic_write(_snapshot_path(path), json.dumps(data))
    except OSError:
        pass  # not writable by this user: fine, the next run parses the YAML again


# ---------------------------------------------------------------- YAML

def _yaml_loader() -> Tuple[Any, Any]:
    import yaml

    class LineLoader(yaml.SafeLoader):
        """Keeps the line of every mapping key, and refuses duplicate keys."""

    def construct_mapping(loader: Any, node: Any, deep: bool = False) -> LineDict:
        mapping = LineDict()
        mapping.line = node.start_mark.line + 1
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if not isinstance(key, (str, int, float, bool)) or key is None:
                raise ConfigError(f"{loader.name}:{line}: a key must be a plain word")
            key = str(key)
            if key in mapping:
                raise ConfigError(f"{loader.name}:{line}: duplicate key {key!r} "
                                  f"(first on line {mapping.lines[key]})")
            mapping[key] = loader.construct_object(value_node, deep=True)
            mapping.lines[key] = line
        return mapping

    LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    return yaml, LineLoader


class LineDict(dict):
    """A YAML mapping that knows its line and the line of each of its keys."""

    def __init__(self) -> None:
        super().__init__()
        self.line = 0
        self.lines: Dict[str, int] = {}


def _nearest(name: str, names: Iterable[str]) -> str:
    """` (did you mean 'rocky9-cuda'?)` for a misspelt image name, else ''."""
    import difflib
    lower = {n.lower(): n for n in names}
    if name.lower() in lower:
        return f" (did you mean {lower[name.lower()]!r}?)"
    close = difflib.get_close_matches(name.lower(), list(lower), n=1, cutoff=0.75)
    return f" (did you mean {lower[close[0]]!r}?)" if close else ""


def _parse_file(path: str) -> LineDict:
    yaml, loader_cls = _yaml_loader()
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (give --config PATH or set SGE_IMAGE_CONFIG)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None
    loader = loader_cls(text)
    loader.name = path
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as e:
        # The line the parser stopped at; where the construct it was reading began
        # (an unclosed quote or bracket) is often the line to fix, so name both.
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 0
        where = ""
        if e.context and e.context_mark and e.problem_mark and \
                e.context_mark.line != e.problem_mark.line:
            where = f" ({e.context} at line {e.context_mark.line + 1})"
        raise ConfigError(f"{path}:{line}: malformed YAML: {e.problem or e}{where}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: malformed YAML: {e}") from None
    finally:
        loader.dispose()
    if data is None:
        data = LineDict()
    if not isinstance(data, LineDict):
        raise ConfigError(f"{path}:1: expected a mapping of settings, got {type(data).__name__}")
    return data


def _load_yaml(path: str) -> Tuple[Settings, List[str]]:
    data = _parse_file(path)
    sources = [path]
    where = lambda key, d=data: f"{path}:{d.lines.get(key, d.line)}"  # noqa: E731
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise ConfigError(f"{where(unknown[0])}: unknown key {unknown[0]!r} "
                          f"(known: {', '.join(sorted(TOP_KEYS))})")
    values: Dict[str, Dict[str, Any]] = {}
    for section, keys in SCHEMA.items():
        given: Any = data.get(section) or LineDict()
        if not isinstance(given, LineDict):
            raise ConfigError(f"{where(section)}: {section!r} must be a mapping")
        extra = sorted(set(given) - set(keys))
        if extra:
            raise ConfigError(f"{path}:{given.lines[extra[0]]}: unknown key {section}.{extra[0]} "
                              f"(known: {', '.join(sorted(keys))})")
        values[section] = {}
        for key, (kind, default) in keys.items():
            raw = given.get(key, default)
            try:
                values[section][key] = _coerce(kind, raw)
            except ValueError as e:
                line = given.lines.get(key, given.line) if isinstance(given, LineDict) else 0
                raise ConfigError(f"{path}:{line}: {section}.{key}: {e}") from None
    _check_cache_values(values, path, data)
    _check_agent_values(values, path, data)

    src = data.get("sources") or {}
    if not isinstance(src, dict):
        raise ConfigError(f"{where('sources')}: 'sources' must be a mapping")

    if "images" in data and "catalog" in data:
        raise ConfigError(f"{where('catalog')}: give either 'catalog: PATH' or inline 'images:', not both")
    if "catalog" in data:
        cat_path = data["catalog"]
        if not isinstance(cat_path, str) or not cat_path:
            raise ConfigError(f"{where('catalog')}: 'catalog' must be the path of a YAML file")
        cat_path = os.path.join(os.path.dirname(path), cat_path)
        cat: Any = _parse_file(cat_path)
        if set(cat) == {"images"} and isinstance(cat["images"], dict):
            cat = cat["images"]  # a catalog file may wrap its mapping in `images:` too
        images = parse_catalog(cat, cat_path)
        sources.append(cat_path)
    else:
        raw = data.get("images")
        if raw is not None and not isinstance(raw, dict):
            raise ConfigError(f"{where('images')}: 'images' must be a mapping of NAME: entry")
        images = parse_catalog(raw or LineDict(), path)
    return Settings(values, images, path, dict(src)), sources


def _check_cache_values(values: Mapping[str, Mapping[str, Any]], path: str,
                        data: LineDict) -> None:
    root = values["cache"]["root"]
    if not os.path.isabs(root):
        line = data.get("cache", LineDict()).lines.get("root", 0) if isinstance(data.get("cache"), dict) else 0
        raise ConfigError(f"{path}:{line}: cache.root must be an absolute path, got {root!r}")


def _check_agent_values(values: Mapping[str, Mapping[str, Any]], path: str,
                        data: LineDict) -> None:
    """A cap on the agent's uploads must leave each upload slot the rate that both
    ends hold it to: the server's own `upload_min_rate` and the receivers'
    `fetch.low_speed_limit`. Below that, with every slot busy, each receiver would get
    less than it waits for and drop the copy for the origin (an upload cap that sends
    every host to the origin)."""
    agent, fetch = values["agent"], values["fetch"]
    rate, slots = agent["upload_rate"], max(1, agent["upload_slots"])
    need = max(agent["upload_min_rate"], fetch["low_speed_limit"])
    if rate and rate < slots * need:
        from .units import format_size
        section = data.get("agent")
        line = section.lines.get("upload_rate", section.line) \
            if isinstance(section, LineDict) else 0
        which = "agent.upload_min_rate" if need == agent["upload_min_rate"] \
            else "fetch.low_speed_limit"
        raise ConfigError(
            f"{path}:{line}: agent.upload_rate {format_size(rate)}/s is below "
            f"agent.upload_slots ({slots}) x {which} ({format_size(need)}/s) = "
            f"{format_size(slots * need)}/s: with every upload slot busy a copy would get "
            f"less than the rate copies are held to; raise upload_rate, or lower "
            f"upload_slots or {which}")


def _coerce(kind: str, raw: Any) -> Any:
    from .units import parse_share, parse_size
    if kind == "size":
        return parse_size(raw)
    if kind == "rate":
        # Bytes a second, written as a size ("200M", "1.5G", "200M/s"); 0, "" or null:
        # no cap.
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            return 0
        bare = raw.strip()[:-2] if isinstance(raw, str) and raw.strip().lower().endswith("/s") \
            else raw
        try:
            return parse_size(bare)
        except ValueError:
            raise ValueError(f"{raw!r} is not a rate in bytes a second (examples: 0 for "
                             f"no cap, 50M, 1.5G, 200M/s)") from None
    if kind == "share":
        return parse_share(raw)
    if kind == "seconds":
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or raw < 0:
            raise ValueError(f"{raw!r} is not a number of seconds")
        return float(raw)
    if kind == "int":
        if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
            raise ValueError(f"{raw!r} is not a non-negative whole number")
        return raw
    if kind == "bool":
        if not isinstance(raw, bool):
            raise ValueError(f"{raw!r} is not true or false")
        return raw
    if kind == "path":
        if not isinstance(raw, str) or not raw:
            raise ValueError(f"{raw!r} is not a path")
        return raw
    if kind == "optpath":
        if raw is not None and (not isinstance(raw, str) or not raw):
            raise ValueError(f"{raw!r} is not a path")
        return raw
    if kind == "offpath":  # "" (off) or an absolute path
        if not isinstance(raw, str) or (raw and not os.path.isabs(raw)):
            raise ValueError(f"{raw!r} is not an absolute path (or \"\" for off)")
        return raw
    if kind == "port":
        if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= 65535:
            raise ValueError(f"{raw!r} is not a TCP port (1-65535)")
        return raw
    if kind == "text":
        if not isinstance(raw, str):
            raise ValueError(f"{raw!r} is not text")
        return raw
    if kind == "trust":
        # Who may talk to the agent: `cluster` (the exec hosts Grid Engine lists) or
        # an explicit list of host names and addresses; never "anyone".
        if raw == "cluster":
            return raw
        if isinstance(raw, str):
            raw = raw.split()
        if not isinstance(raw, list) or not raw or not all(isinstance(a, str) and a for a in raw):
            raise ValueError(f"{raw!r} is not `cluster` or a list of hosts")
        import ipaddress
        for a in raw:
            if "/" in a:
                try:
                    ipaddress.ip_network(a, strict=False)
                except ValueError:
                    raise ValueError(f"{a!r} is not a network (such as 10.1.0.0/16)") from None
        return raw
    if kind == "runtime":
        # A preset name, a template or the legacy list: checked here, so a misspelt
        # runtime fails `catalog check` rather than every job's starter.
        from .runtimes import UnusableRuntime, from_setting
        words = _coerce("argv", raw)
        try:
            from_setting(words)
        except UnusableRuntime as e:
            raise ValueError(str(e).replace("starter.runtime: ", "")) from None
        return words
    if kind == "binds":
        if isinstance(raw, str):
            raw = raw.split()
        if not isinstance(raw, list) or not all(isinstance(a, str) and a.startswith("/")
                                                 for a in raw):
            raise ValueError(f"{raw!r} is not a list of absolute paths (SRC or SRC:DST)")
        for a in raw:
            dst = a.partition(":")[2]
            if (dst and not dst.startswith("/")) or any(c in a for c in ",\0\n"):
                raise ValueError(f"{a!r} is not SRC or SRC:DST with absolute paths")
        return raw
    if kind == "argv":
        if isinstance(raw, str):
            raw = raw.split()
        if not isinstance(raw, list) or not raw or not all(isinstance(a, str) and a for a in raw):
            raise ValueError(f"{raw!r} is not a command (a list of words)")
        return raw
    raise AssertionError(kind)


def parse_catalog(data: Mapping[str, Any], path: str) -> Dict[str, Image]:
    """NAME -> {url, sha256, size} mapping -> {name: Image}; every error names its line."""
    from .fetch import OPTION_SOURCES, check_options
    image_keys = IMAGE_KEYS | set(OPTION_SOURCES)
    images: Dict[str, Image] = {}
    seen_complex: Dict[str, str] = {}
    for name, entry in data.items():
        line = data.lines.get(name, 0) if isinstance(data, LineDict) else 0
        at = f"{path}:{line}"
        if not is_valid_name(name):
            raise ConfigError(f"{at}: {explain_invalid(name)}")
        cx = warm_complex(name)
        if cx in RESERVED_COMPLEXES:
            raise ConfigError(f"{at}: image name {name!r} is reserved: its complex {cx} is "
                              f"one the kit defines itself; rename the image")
        if cx in seen_complex:
            raise ConfigError(f"{at}: image {name!r} differs from {seen_complex[cx]!r} only in "
                              f"case; both would set the complex {cx}")
        seen_complex[cx] = name
        if not isinstance(entry, dict):
            raise ConfigError(f"{at}: image {name!r}: expected a mapping with url, sha256, size")
        eline = lambda key, e=entry: f"{path}:{e.lines.get(key, line)}"  # noqa: E731
        extra = sorted(set(entry) - image_keys)
        if extra:
            raise ConfigError(f"{eline(extra[0])}: image {name!r}: unknown key {extra[0]!r} "
                              f"(known: {', '.join(sorted(image_keys))})")
        urls = entry.get("url")
        if isinstance(urls, str):
            urls = [urls]
        if not urls or not isinstance(urls, list) or not all(isinstance(u, str) and u.strip() for u in urls):
            raise ConfigError(f"{eline('url')}: image {name!r}: 'url' must be a URL or a list of mirror URLs")
        for u in urls:
            if any(c in u for c in "\0\n\r"):
                raise ConfigError(f"{eline('url')}: image {name!r}: url contains a control character")
        digest = entry.get("sha256")
        if isinstance(digest, (int, float)) and not isinstance(digest, bool):
            # An all-digit digest (or one like 1e5...) is a number to YAML: leading
            # zeros are gone and the value is no longer the digest.
            raise ConfigError(f"{eline('sha256')}: image {name!r}: sha256 was read as a number; "
                              f"quote it: sha256: \"<64 hex digits>\"")
        if digest is not None:
            digest = str(digest).lower()
            if digest.startswith("sha256:"):
                digest = digest[7:]
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ConfigError(f"{eline('sha256')}: image {name!r}: sha256 must be 64 hex digits")
        size = entry.get("size")
        if size is not None:
            from .units import parse_size
            try:
                size = parse_size(size)
            except ValueError as e:
                raise ConfigError(f"{eline('size')}: image {name!r}: size: {e}") from None
        description = entry.get("description", "")
        if not isinstance(description, str):
            raise ConfigError(f"{eline('description')}: image {name!r}: description must be text")
        fmt = entry.get("format")
        if fmt is not None and fmt not in ("sif", "squashfs"):
            raise ConfigError(f"{eline('format')}: image {name!r}: format must be sif or "
                              f"squashfs, got {fmt!r}")
        options = {k: entry[k] for k in OPTION_SOURCES if k in entry}
        for k, v in options.items():
            if not isinstance(v, dict):
                raise ConfigError(f"{eline(k)}: image {name!r}: {k!r} must be a mapping of options")
            problem = check_options(k, v)
            if problem:
                lines = getattr(v, "lines", {})
                where = f"{path}:{lines[problem[0]]}" if problem[0] in lines else eline(k)
                raise ConfigError(f"{where}: image {name!r}: {k}.{problem[0]}: {problem[1]}")
        image = Image(name, [u.strip() for u in urls], digest, size, description,
                      {k: dict(v) for k, v in options.items()}, fmt)
        if digest is None and image.pin is None:
            raise ConfigError(f"{at}: image {name!r} has neither a sha256 nor a source that pins "
                              f"one (such as oras://registry/repo@sha256:...); add its sha256")
        if digest is None and any("@sha256:" not in u for u in image.urls):
            raise ConfigError(f"{eline('url')}: image {name!r}: without a sha256, every mirror "
                              f"must pin its digest (@sha256:...), or one could serve anything; "
                              f"add the image's sha256")
        images[name] = image
    return images

