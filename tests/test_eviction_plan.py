"""The eviction decision as a pure function of a cache scan (sge/eviction.py): no
filesystem, every case spelt out."""
from sge.eviction import (
    KEPT_PINNED,
    KEPT_RECENT,
    KEPT_WANTED,
    CacheScan,
    Entry,
    Limits,
    plan_eviction,
    room_for_new,
)

NOW = 10_000.0


def scan(*entries, inflight=0, disk_free=10 ** 12):
    return CacheScan(tuple(entries), inflight, disk_free, NOW)


def e(digest, size, age, pinned=False, names=()):
    return Entry(digest, size, NOW - age, tuple(names), pinned)


CAP = Limits(max_size=100, low_water=0.5, min_free=0, evict_grace=60)


def test_nothing_goes_while_the_need_fits():
    p = plan_eviction(scan(e("a", 40, 500)), 50, CAP)
    assert p.evict == () and p.fits and not p.busy


def test_least_recently_used_first_down_to_low_water():
    s = scan(e("new", 30, 100), e("old", 30, 900), e("mid", 30, 500))
    p = plan_eviction(s, 20, CAP)
    # target 50% of 100 minus the 20 needed = 30: two must go, oldest first
    assert [x.digest for x in p.evict] == ["old", "mid"]
    assert p.fits and p.used_after == 30 and p.freed == 60


def test_pinned_recent_and_wanted_images_stay_and_say_why():
    s = scan(e("pin", 30, 900, pinned=True), e("fresh", 30, 10), e("want", 30, 800),
             e("lru", 10, 700))
    p = plan_eviction(s, 20, CAP, keep=("want",))
    assert [x.digest for x in p.evict] == ["lru"]
    assert [(x.digest, why) for x, why in p.kept] == [
        ("pin", KEPT_PINNED), ("want", KEPT_WANTED), ("fresh", KEPT_RECENT)]
    assert not p.fits and p.busy  # 90 held + 20 > 100 now, but it fits once they go


def test_an_image_larger_than_the_cap_is_not_busy():
    p = plan_eviction(scan(e("a", 10, 5)), 150, CAP)
    assert not p.fits and not p.busy


def test_the_disk_binds_before_the_cap():
    lim = Limits(max_size=None, low_water=0.8, min_free=5, evict_grace=0)
    p = plan_eviction(scan(e("a", 20, 50), e("b", 20, 40), disk_free=10), 20, lim)
    assert [x.digest for x in p.evict] == ["a"] and p.fits and p.free_after == 30


def test_downloads_in_progress_count_as_used():
    p = plan_eviction(scan(e("a", 30, 900), inflight=85), 20, CAP)
    assert [x.digest for x in p.evict] == ["a"]
    assert not p.fits and p.busy  # the other download holds 85 until it is done


def test_room_counts_only_what_eviction_may_take():
    s = scan(e("old", 30, 100), e("pinned", 20, 100, pinned=True), e("recent", 10, 1))
    lim = Limits(max_size=100, low_water=0.8, min_free=0, evict_grace=60)
    assert room_for_new(s, lim) == 40 + 30   # free under the cap, plus the old image
    s = scan(e("old", 30, 100), e("pinned", 20, 100, pinned=True), e("recent", 10, 1),
             disk_free=15)
    lim5 = Limits(max_size=100, low_water=0.8, min_free=5, evict_grace=60)
    assert room_for_new(s, lim5) == 15 - 5 + 30  # the disk binds
    s = scan(e("old", 30, 100), e("pinned", 20, 100, pinned=True), e("recent", 10, 1),
             inflight=35)
    assert room_for_new(s, lim) == 5 + 30
    assert room_for_new(scan(e("p", 200, 100, pinned=True)), lim) == 0
