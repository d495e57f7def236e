"""API keys (router_service.auth) and the token bucket (router_service.rate_limit): pure logic."""

from __future__ import annotations

import hmac
from pathlib import Path

import pytest

from router_service import auth
from router_service.auth import KeyConfigError, KeySources, KeyStore, make_key, parse_key_entries
from router_service.rate_limit import RateLimiter, TokenBucket

K1 = "sk-test-aaaaaaaaaaaaaaaa"
K2 = "sk-test-bbbbbbbbbbbbbbbb"
K3 = "sk-test-cccccccccccccccc"


def test_authenticate_finds_the_right_key_and_refuses_others() -> None:
    store = KeyStore([make_key("a", K1), make_key("b", K2, ["planner"])])
    assert store.authenticate(K1).name == "a"  # type: ignore[union-attr]
    assert store.authenticate(K2).name == "b"  # type: ignore[union-attr]
    assert store.authenticate(K3) is None
    assert store.authenticate(K1[:-1]) is None  # a prefix is not the key
    assert store.authenticate(K1 + "x") is None
    assert store.authenticate("") is None


def test_every_key_is_compared_whatever_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    """No early exit: a match on the first key costs as many comparisons as no match at all,
    and every comparison is between equal-length digests, never the raw key."""
    calls: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    store = KeyStore([make_key("a", K1), make_key("b", K2), make_key("c", K3)])
    for presented in (K1, K3, "sk-wrong-wrong-wrong-wrong", "x"):
        calls.clear()
        store.authenticate(presented)
        assert calls == [(32, 32)] * 3, presented


def test_keys_are_kept_only_as_digests() -> None:
    key = make_key("a", K1)
    assert K1 not in repr(key) and K1.encode() not in key.digest


def test_roles_restrict_a_key() -> None:
    assert make_key("a", K1, ["planner"]).may_use("planner")
    assert not make_key("a", K1, ["planner"]).may_use("coder")
    assert make_key("a", K1).may_use("anything")


def test_parse_entries_with_roles_and_comments() -> None:
    text = f"# rotated 2026-01\n{K1}\n{K2}:planner,coder  # the agent team\n\n  {K3}  \n"
    keys = parse_key_entries(text, "keys.txt")
    assert [k.roles for k in keys] == [None, frozenset({"planner", "coder"}), None]
    store = KeyStore(keys)
    assert store.authenticate(K2) is keys[1]
    # Names are digest prefixes: stable, and never the key.
    assert all(k.name.startswith("key-") and len(k.name) == 12 for k in keys)
    assert len({k.name for k in keys}) == 3


@pytest.mark.parametrize(("text", "expected"), [
    ("short", "at least 16"),
    (f"{K1}:", "followed by role names"),
    ("sk-\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9", "printable ASCII"),
])
def test_bad_entries_name_where_never_what(text: str, expected: str) -> None:
    with pytest.raises(KeyConfigError) as err:
        parse_key_entries(f"{K1}\n{text}", "secret-file")
    msg = str(err.value)
    assert expected in msg and "secret-file, entry 2" in msg
    assert text.split(":")[0] not in msg and K1 not in msg


def test_sources_merge_config_env_and_file(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"{K3}:critic\n")
    sources = KeySources((make_key("cfg", K1),), "MY_KEYS", keys_file)
    store = sources.load({"MY_KEYS": f"{K2}:planner"})
    assert len(store) == 3
    assert store.authenticate(K1).name == "cfg"  # type: ignore[union-attr]
    assert store.authenticate(K2).roles == {"planner"}  # type: ignore[union-attr]
    assert store.authenticate(K3).roles == {"critic"}  # type: ignore[union-attr]
    # An unset or empty variable adds nothing.
    assert len(sources.load({})) == 2


def test_missing_file_and_duplicate_keys_are_errors(tmp_path: Path) -> None:
    with pytest.raises(KeyConfigError, match="cannot read the API keys file"):
        KeySources(file=tmp_path / "absent").load({})
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"{K1}\n")
    with pytest.raises(KeyConfigError, match="more than once"):
        KeySources(env_var="E", file=keys_file).load({"E": K1})


def test_unknown_roles_are_refused() -> None:
    store = KeyStore([make_key("a", K1, ["planner", "wizard"])])
    with pytest.raises(KeyConfigError, match="wizard"):
        store.check_roles(["planner", "coder"])


def test_token_bucket_allows_burst_then_refills() -> None:
    bucket = TokenBucket.full(rate_per_s=2.0, burst=3, now=100.0)
    assert [bucket.take(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(100.0) == pytest.approx(0.5)  # one token every 0.5 s
    assert bucket.take(100.25) == pytest.approx(0.25)
    assert bucket.take(100.5) == 0.0
    # A long idle time refills to the burst, not beyond.
    assert [bucket.take(1000.0) for _ in range(4)][-1] > 0


def test_rate_limiter_keeps_one_bucket_per_key_with_overrides() -> None:
    limiter = RateLimiter(rate_per_s=1.0, burst=1)
    assert limiter.take("a", 0.0) == 0.0
    assert limiter.take("a", 0.0) == pytest.approx(1.0)
    assert limiter.take("b", 0.0) == 0.0  # another key has its own bucket
    assert [limiter.take("vip", 0.0, rate_per_s=10.0, burst=5) for _ in range(6)][-1] == \
        pytest.approx(0.1)
    with pytest.raises(ValueError):
        RateLimiter(rate_per_s=0, burst=1)
