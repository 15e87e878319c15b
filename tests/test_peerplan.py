"""The peer plan (sge/peerplan.py) without sockets: the order of a pull's asks, the
fan-out through busy answers, polling, seeds and the origin, as the agent and the
simulator both follow them."""
import random

from sge.peerplan import (
    MAX_NAMED,
    MAX_REDIRECT_DEPTH,
    MAX_REDIRECTS,
    MAX_SEEDS,
    POLL_MAX,
    POLL_MIN,
    Answer,
    Ask,
    Kind,
    PeerPlan,
    rendezvous,
    seed_for,
)

D = "ab" * 32
HOSTS = [f"n{i:02d}" for i in range(20)]


def plan(me="n00", live=HOSTS, have=(), **kw):
    return PeerPlan(D, live, list(have), lambda h: h == me, random.Random(1), **kw)


def me_not_seed():
    seed = seed_for(D, HOSTS)
    return next(h for h in HOSTS if h != seed)


def test_hint_then_have_hosts_then_their_downloads_then_the_seed():
    me = me_not_seed()
    have = [h for h in HOSTS[:6] if h != me]
    p = plan(me, have=have, hint="n19")
    t = 0.0
    first = p.next(t)
    assert first == Ask(Kind.BLOB, "n19")
    p.answer(first, Answer.FAILED, t)
    asked = []
    for _ in range(3):  # at most three hosts that report it, for the whole blob
        a = p.next(t)
        assert a.kind is Kind.BLOB and a.host in have
        asked.append(a.host)
        p.answer(a, Answer.MISSING, t)
    assert len(set(asked)) == 3
    # those that had no whole blob: their downloads in progress
    for h in asked:
        a = p.next(t)
        assert a == Ask(Kind.STREAM, h)
        p.answer(a, Answer.MISSING, t)
    a = p.next(t)
    assert a == Ask(Kind.STAGE, seed_for(D, HOSTS))


def test_the_host_that_is_the_seed_goes_to_the_origin_at_once():
    me = seed_for(D, HOSTS)
    p = plan(me)
    assert p.next(0.0).kind is Kind.ORIGIN
    assert "seed" in p.why


def test_a_staging_another_host_asked_for_never_delegates():
    p = plan(me_not_seed(), delegate=False)
    assert p.next(0.0).kind is Kind.ORIGIN


def test_a_busy_seed_fans_out_depth_first_then_waits_rather_than_pulling():
    me = me_not_seed()
    seed = seed_for(D, HOSTS)
    p = plan(me)
    t = 0.0
    assert p.next(t) == Ask(Kind.STAGE, seed)
    p.answer(Ask(Kind.STAGE, seed), Answer.STAGING, t)
    a = p.next(t)
    assert a == Ask(Kind.STREAM, seed)
    level1 = [h for h in HOSTS if h not in (me, seed)][:MAX_NAMED]
    p.answer(a, Answer.BUSY, t, named=level1)
    a = p.next(t)
    assert a.kind is Kind.STREAM and a.host in level1 and a.depth == 1
    # that one is busy too: the hosts it names come next, one hop deeper
    level2 = [h for h in HOSTS if h not in level1 + [me, seed]][:MAX_NAMED]
    p.answer(a, Answer.BUSY, t, named=level2 + [me, a.host])  # never me, never back
    b = p.next(t)
    assert b.host in level2 and b.depth == 2
    asked = {a.host, b.host}
    p.answer(b, Answer.BUSY, t, named=[])
    while True:
        c = p.next(t)
        if c.kind is not Kind.STREAM:
            break
        assert c.host not in asked and c.host != me
        asked.add(c.host)
        p.answer(c, Answer.BUSY, t, named=[])
    # every named host busy: wait and ask the seed again, never the origin
    assert c.kind is Kind.WAIT and c.delay == POLL_MIN
    assert len(asked) == len(set(level1 + level2))
    t += c.delay
    assert p.next(t) == Ask(Kind.STAGE, seed)


def test_redirects_are_bounded_by_depth_and_by_round():
    me = me_not_seed()
    p = plan(me, live=[f"h{i}" for i in range(200)] + [me])
    seed = p.next(0.0).host
    p.answer(Ask(Kind.STAGE, seed), Answer.STAGING, 0.0)
    a = p.next(0.0)
    fresh = (f"h{i}" for i in range(200) if f"h{i}" != seed)
    asked, deepest = 0, 0
    while a.kind is Kind.STREAM:
        asked += a.depth > 0
        deepest = max(deepest, a.depth)
        p.answer(a, Answer.BUSY, 0.0, named=[next(fresh) for _ in range(MAX_NAMED)])
        a = p.next(0.0)
    assert a.kind is Kind.WAIT
    assert asked == MAX_REDIRECTS and deepest <= MAX_REDIRECT_DEPTH


def test_polls_back_off_and_a_slow_seed_is_replaced_within_the_seed_wait():
    me = rendezvous(D, HOSTS)[-1]  # last in the ranking: never its own seed here
    p = plan(me, seed_wait=10)
    t = 0.0
    seeds, delays = [], []
    while True:
        a = p.next(t)
        if a.kind is Kind.ORIGIN:
            break
        if a.kind is Kind.STAGE:
            if not seeds or seeds[-1] != a.host:
                seeds.append(a.host)
            p.answer(a, Answer.STAGING, t)
        elif a.kind is Kind.STREAM:
            p.answer(a, Answer.MISSING, t)  # the seed's download has not begun
        elif a.kind is Kind.WAIT:
            delays.append(a.delay)
            t += a.delay
    assert seeds == rendezvous(D, HOSTS)[:MAX_SEEDS]
    assert delays[0] == POLL_MIN and max(delays) == POLL_MAX
    assert 3 * 10 <= t <= 3 * 10 + 3 * POLL_MAX
    assert "seed" in p.why


def test_a_dead_seed_is_dropped_and_every_host_agrees_on_the_next():
    seed = seed_for(D, HOSTS)
    nexts = set()
    for me in [h for h in HOSTS if h != seed][:8]:
        p = plan(me)
        a = p.next(0.0)
        assert a == Ask(Kind.STAGE, seed)
        p.answer(a, Answer.NEXT, 0.0)
        nexts.add(p.next(0.0).host)
    assert nexts == {seed_for(D, [h for h in HOSTS if h != seed])} or len(nexts) == 2
    # (the second seed is one host for all, except for the host that is that seed:
    # it goes to the origin, the one pull)


def test_a_refusal_goes_to_the_origin_and_a_failed_peer_is_not_asked_again():
    me = me_not_seed()
    p = plan(me, have=["n10", "n11"])
    a = p.next(0.0)
    p.answer(a, Answer.REFUSED, 0.0)
    assert p.next(0.0).kind is Kind.ORIGIN and "403" in p.why
    seed = seed_for(D, HOSTS)
    p = plan(me)
    p.answer(p.next(0.0), Answer.STAGING, 0.0)
    a = p.next(0.0)
    liar = next(h for h in HOSTS if h not in (me, seed))
    p.answer(a, Answer.BUSY, 0.0, named=[liar])
    b = p.next(0.0)
    assert b.host == liar
    p.answer(b, Answer.FAILED, 0.0)  # its bytes did not verify
    w = p.next(0.0)
    assert w.kind is Kind.WAIT
    p.answer(p.next(w.delay), Answer.STAGING, w.delay)
    c = p.next(w.delay)
    p.answer(c, Answer.BUSY, w.delay, named=[liar])
    assert p.next(w.delay).kind is Kind.WAIT  # not the liar again


def test_a_ready_seed_is_copied_whole_and_a_got_ends_the_plan():
    me = me_not_seed()
    p = plan(me)
    a = p.next(0.0)
    p.answer(a, Answer.READY, 0.0)
    b = p.next(0.0)
    assert b == Ask(Kind.BLOB, a.host)
    p.answer(b, Answer.GOT, 0.0)
    assert p.done


def test_the_seed_ranking_is_the_same_everywhere_and_spreads_images():
    assert rendezvous(D, HOSTS) == rendezvous(D, list(reversed(HOSTS)))
    seeds = {seed_for(f"{i:064x}", HOSTS) for i in range(200)}
    assert len(seeds) >= 15
    # a host leaving moves only its own images
    moved = sum(seed_for(f"{i:064x}", HOSTS) != seed_for(f"{i:064x}", HOSTS[1:])
                for i in range(400))
    owned = sum(seed_for(f"{i:064x}", HOSTS) == HOSTS[0] for i in range(400))
    assert moved == owned
    assert POLL_MAX > POLL_MIN


def test_any_answers_end_the_plan_within_its_bounds():
    """Whatever peers answer (lying ones name anyone, again and again), a plan never
    asks this host, never follows a busy answer deeper than its bound, asks at most
    MAX_SEEDS seeds, and ends: at the origin or with a verified image, within the
    seeds' waits."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    answers = st.sampled_from([a for a in Answer if a is not Answer.GOT])

    @settings(max_examples=300, deadline=None, database=None)
    @given(st.lists(st.tuples(answers, st.lists(st.sampled_from(HOSTS), max_size=6)),
                    min_size=1, max_size=400),
           st.sampled_from(HOSTS), st.lists(st.sampled_from(HOSTS), max_size=5))
    def run(script, me, have):
        p = PeerPlan(D, HOSTS, have, lambda h: h == me, random.Random(0), seed_wait=30)
        t, seeds, failed = 0.0, [], set()
        for i in range(10_000):
            a = p.next(t)
            if a.kind is Kind.ORIGIN:
                break
            if a.kind is Kind.WAIT:
                assert POLL_MIN <= a.delay <= POLL_MAX
                t += a.delay
                continue
            assert a.host != me and a.depth <= MAX_REDIRECT_DEPTH
            if a.depth:
                assert a.host not in failed  # a host whose bytes failed is not asked again
            if a.kind is Kind.STAGE and (not seeds or seeds[-1] != a.host):
                seeds.append(a.host)
            answer, named = script[i % len(script)]
            if a.kind is not Kind.STAGE and answer in (Answer.READY, Answer.STAGING,
                                                       Answer.NEXT, Answer.STOP):
                answer = Answer.FAILED  # a blob GET answers with a status, not a state
            if answer is Answer.FAILED and a.host != p.seed:
                failed.add(a.host)
            p.answer(a, answer, t, named)
        else:
            raise AssertionError("the plan did not end")
        assert len(seeds) <= MAX_SEEDS
        assert t <= MAX_SEEDS * (30 + POLL_MAX)

    run()


def test_a_staging_another_host_asked_for_takes_whole_blobs_only():
    """The seed's own pull (and a parallel job's host's) never streams the downloads
    in progress that hosts report while they wait for it: they are fed by it."""
    me = me_not_seed()
    p = plan(me, have=["n10", "n11"], delegate=False)
    asks = []
    while True:
        a = p.next(0.0)
        asks.append(a)
        if a.kind is Kind.ORIGIN:
            break
        p.answer(a, Answer.MISSING, 0.0)
    assert [a.kind for a in asks] == [Kind.BLOB, Kind.BLOB, Kind.ORIGIN]
