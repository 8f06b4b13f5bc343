"""client/fleet.py: --url list parsing and the round-robin/failover logic (Triton-backed tests still to come)."""
import pytest

from client.fleet import AllServersFailed, Fleet, split_urls


def test_split_urls_strips_and_keeps_order():
    assert split_urls("127.0.0.1:8001, 127.0.0.1:9001") == ["127.0.0.1:8001", "127.0.0.1:9001"]
    assert split_urls("h:1") == ["h:1"]


@pytest.mark.parametrize("bad,word", [("a:1,,b:2", "empty"), ("a:1,a:1", "twice")])
def test_split_urls_bad_lists_named(bad, word):
    with pytest.raises(ValueError, match=word):
        split_urls(bad)


def test_round_robin_reaches_every_server():
    fleet = Fleet(["a", "b"], ["A", "B"])
    got = [fleet.call(lambda c: c) for _ in range(6)]
    assert sorted(set(got)) == ["A", "B"]
    assert fleet.summary() == {"a": {"ok": 3, "failed": 0}, "b": {"ok": 3, "failed": 0}}


def test_failing_server_retried_on_other_and_all_failed_named():
    def fn(c):
        if c == "A":
            raise ConnectionError("connection refused")
        return c
    fleet = Fleet(["a", "b"], ["A", "B"])
    assert [fleet.call(fn) for _ in range(4)] == ["B"] * 4
    assert fleet.summary()["b"]["ok"] == 4 and fleet.summary()["a"]["failed"] == 2
    with pytest.raises(AllServersFailed, match="a: connection refused"):
        Fleet(["a"], ["A"]).call(fn)
