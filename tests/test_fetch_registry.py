"""The one registry of sources (sge/fetch/__init__.py): each entry's module keeps the
contract, and the catalog's option keys come from it."""
import pytest

from sge import fetch
from sge.errors import FetchError


@pytest.mark.parametrize("src", fetch.SOURCES, ids=lambda s: s.name)
def test_every_registered_source_keeps_the_contract(src):
    mod = fetch.fetcher(src.name)
    assert callable(mod.fetch)
    if src.takes_options:
        assert mod.OPTION_KEYS and all(isinstance(h, str) for h in mod.OPTION_KEYS.values())
        assert mod.SITE_KEYS is None or set(mod.SITE_KEYS) <= set(mod.OPTION_KEYS)
        assert mod.check_options({}) is None


def test_each_scheme_has_one_source():
    schemes = [s for src in fetch.SOURCES for s in src.schemes]
    assert len(schemes) == len(set(schemes))
    assert fetch.fetcher_for("https://h/x.sif") is fetch.fetcher("http")
    assert fetch.fetcher_for("/srv/x.sif") is fetch.fetcher("file")
    with pytest.raises(FetchError, match="unknown source scheme 'ftp'"):
        fetch.fetcher_for("ftp://h/x.sif")


def test_option_checks_name_the_key():
    assert fetch.check_options("s3", {"enpoint_url": "http://x"})[0] == "enpoint_url"
    assert fetch.check_options("s3", {"anonymous": "yes"})[0] == "anonymous"
    # oras takes only docker_config site-wide: the rest belong to each image
    key, why = fetch.check_options("oras", {"username": "u"}, site=True)
    assert key == "username" and "belong to each image" in why
    assert fetch.check_options("oras", {"username": "u"}) is None
