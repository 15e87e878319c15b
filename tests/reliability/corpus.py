"""Hostile `-l image=` values and catalog entries.

`MARK` is part of every value that names a file to create, so that "no file was created
outside the cache root" can be checked by looking for it everywhere it could land.
"""
import string

MARK = "pwned-7f3a"

FIXED = [
    # empty and dot names
    "", ".", "..", "...", ".demo", "demo.", "-", "--", "_demo",
    # path traversal and absolute paths
    "../x", "../../etc/passwd", f"../../../../../../tmp/{MARK}", f"..\\..\\{MARK}",
    "/etc/passwd", f"/tmp/{MARK}", "/", "//", "a/b", "a/../b", "./demo", "demo/", "demo/.",
    f"demo/../../{MARK}", "~root", f"~/{MARK}", "..%2f..%2fetc%2fpasswd", "demo%00", "%2e%2e",
    # shell metacharacters and command substitution
    "$HOME", "${IFS}", f"$(touch /tmp/{MARK})", f"`touch /tmp/{MARK}`", "a;b",
    f"demo;touch /tmp/{MARK}",
    "a|b", "a&b", "a&&b", "a||b", "!demo", "a>b", f"a>/tmp/{MARK}", "a<b", "*", "?", "[a]", "{a,b}",
    "demo*", "'demo'", '"demo"', "demo\\", "a b", " demo", "demo ", "\tdemo", "demo#x", "demo(1)",
    # Grid Engine request syntax and protocol injection
    "demo,h_rt=1", "x,image=demo", "demo=x", "image=demo", "demo:1", "demo@host", "img_demo",
    "demo\nPARAM l_hard h_rt=0", "demo\rRESULT STATE ACCEPT", "RESULT STATE ACCEPT",
    # format strings (qmaster prints RESULT messages printf-style)
    "%n%n%n%n", "%s%s%s", "%99999999d",
    # control characters, NUL
    "demo\n", "demo\r", "demo\x00", "\x00", f"demo\x00../../{MARK}", "demo\x1b[31m", "demo\x7f",
    "demo\x08", "\x1b]0;title\x07",
    # option injection
    "-rf", f"--config=/tmp/{MARK}", "--help", "-demo", "-l",
    # length
    "a" * 65, "a" * 64, "a" * 1000, "a" * 10240, "../" * 3000,
    # unicode look-alikes and invisible characters
    "d\u0435mo", "dem\u043e", "\uff44\uff45\uff4d\uff4f", "de\u200bmo", "demo\u202e", "\u202edemo",
    "de\u0301mo", "\ufb01le", "demo\u00a0", "demo\u2028", "d\u00e9mo", "demo\ufeff",
    "\U0001d41d\U0001d41e\U0001d426\U0001d428", "\u217eemo", "DEMO\u0130", "\u0131mg",
    "demo\u2044x", "demo\u2215..\u2215x", "\uff0e\uff0e\uff0fx",
    # names that collide after the complex-name mapping (lower case, img_ prefix)
    "DEMO", "Demo", "dEmO", "cache_free", "sensor_time", "CACHE_FREE", "Sensor_Time",
]

DANGER = "/\\.;|&$`'\"<>*?()[]{}!#~%=,: \t\n\r\x00\x1b\u202e\u200b\u0430\u0435"


def hostile_values(rng, extra=130):
    """FIXED plus `extra` random mixes of dangerous and ordinary characters."""
    out = list(FIXED)
    letters = string.ascii_letters + string.digits + "._-"
    while len(out) < len(FIXED) + extra:
        n = rng.randint(1, 40)
        s = "".join(rng.choice(DANGER) if rng.random() < 0.4 else rng.choice(letters)
                    for _ in range(n))
        if rng.random() < 0.2:
            s = "../" * rng.randint(1, 6) + MARK
        if s not in out:
            out.append(s)
    return out


def hostile_entries(digest, url):
    """(label, catalog mapping) pairs the catalog loader must reject, with the line."""
    ok = {"url": url, "sha256": digest}
    return [
        ("url with NUL", {"demo": {**ok, "url": url + "\x00x"}}),
        ("url with newline", {"demo": {**ok, "url": url + "\nx"}}),
        ("url with CR", {"demo": {**ok, "url": url + "\rx"}}),
        ("empty url", {"demo": {**ok, "url": ""}}),
        ("blank url", {"demo": {**ok, "url": "   "}}),
        ("empty mirror list", {"demo": {**ok, "url": []}}),
        ("url not text", {"demo": {**ok, "url": 5}}),
        ("url mapping", {"demo": {**ok, "url": {"a": 1}}}),
        ("no url", {"demo": {"sha256": digest}}),
        ("sha256 traversal", {"demo": {**ok, "sha256": "../../../../etc/passwd"}}),
        ("sha256 traversal padded", {"demo": {**ok, "sha256": ("../" * 22)[:64]}}),
        ("sha256 short", {"demo": {**ok, "sha256": digest[:63]}}),
        ("sha256 long", {"demo": {**ok, "sha256": digest + "0"}}),
        ("sha256 fullwidth digits", {"demo": {**ok, "sha256": "\uff10" * 64}}),
        ("sha256 with NUL", {"demo": {**ok, "sha256": digest[:63] + "\x00"}}),
        ("sha256 slash", {"demo": {**ok, "sha256": "/" * 64}}),
        ("sha256 number", {"demo": {**ok, "sha256": 12345}}),
        ("size negative", {"demo": {**ok, "size": -1}}),
        ("size huge float", {"demo": {**ok, "size": "1e999"}}),
        ("size word", {"demo": {**ok, "size": "big"}}),
        ("size bool", {"demo": {**ok, "size": True}}),
        ("size list", {"demo": {**ok, "size": [1]}}),
        ("description mapping", {"demo": {**ok, "description": {"x": 1}}}),
        ("unknown key", {"demo": {**ok, "urll": url}}),
        ("entry not a mapping", {"demo": "http://x"}),
        ("entry list", {"demo": [url]}),
        ("no sha256 and no pin", {"demo": {"url": url}}),
        ("case collision", {"demo": ok, "Demo": ok}),
        ("case collision upper", {"demo": ok, "DEMO": ok}),
        ("reserved complex cache_free", {"cache_free": ok}),
        ("reserved complex sensor_time", {"sensor_time": ok}),
        ("reserved complex in upper case", {"Cache_Free": ok}),
        ("s3 options not a mapping", {"demo": {**ok, "s3": "x"}}),
        ("s3 unknown option", {"demo": {**ok, "s3": {"enpoint_url": "x"}}}),
        ("command options not a mapping", {"demo": {**ok, "command": ["sh", "-c", "x"]}}),
    ]
