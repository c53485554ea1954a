"""The key format, hashing, identifiers and flag parsing: pure functions, checked with hypothesis."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import runtime.gate.keys as keys_pkg
from runtime.gate.keys import (
    KEY_PREFIX,
    KeyRecord,
    generate_key,
    hash_key,
    hashes_equal,
    is_key_hash,
    is_well_formed,
    parse_ident,
)
from runtime.gate.keys.parse import parse_daily_cap, parse_duration, parse_expires, parse_rate
from warmstart.errors import ConfigError

well_formed = st.from_regex(r"\Aws_live_[0-9a-f]{64}\Z", fullmatch=True)
NOW = 1_800_000_000.0


def test_public_interface() -> None:
    for name in ("KeyRecord", "KeyStore", "open_key_store", "hash_key", "is_well_formed", "generate_key",
                 "CachedKeyStore", "KEY_PREFIX"):
        assert name in keys_pkg.__all__ and hasattr(keys_pkg, name)
    assert set(keys_pkg.__all__) <= set(dir(keys_pkg))


def test_generated_keys_are_well_formed_and_distinct() -> None:
    made = [generate_key() for _ in range(2000)]
    assert all(is_well_formed(k) and k.startswith(KEY_PREFIX) for k in made)
    assert len(set(made)) == len(made)
    # 32 random bytes: every hex digit shows up in every position across 2000 keys.
    assert all(len({k[i] for k in made}) == 16 for i in range(len(KEY_PREFIX), len(made[0])))


def test_hash_is_sha256_of_the_whole_key_pinned() -> None:
    # Pinned so the Pulumi program (which hashes the initial key itself) cannot silently diverge.
    assert hash_key("ws_live_" + "0" * 64) == "cac59e7f89662545c915fcff69fd0382d406dcf7920823177d52b578b0a68216"


@settings(deadline=None)  # a loaded 2-core CI box must not turn slowness into failures
@given(well_formed)
def test_well_formed_keys_hash_to_a_digest(key: str) -> None:
    assert is_well_formed(key)
    digest = hash_key(key)
    assert digest == hashlib.sha256(key.encode()).hexdigest() and is_key_hash(digest)
    assert hashes_equal(digest, hash_key(key)) and not hashes_equal(digest, hash_key(key[:-1] + "x"))


@settings(deadline=None)
@given(well_formed, st.integers(min_value=0, max_value=71), st.characters())
def test_any_single_change_breaks_the_format(key: str, pos: int, char: str) -> None:
    mutated = key[:pos] + char + key[pos + 1 :]
    assume(mutated != key)
    assert is_well_formed(mutated) == bool(re.fullmatch(r"ws_live_[0-9a-f]{64}", mutated))


@settings(deadline=None)
@given(st.text(max_size=100))
def test_random_text_is_not_a_key(text: str) -> None:
    assert is_well_formed(text) == bool(re.fullmatch(r"ws_live_[0-9a-f]{64}", text))


@pytest.mark.parametrize(
    "bad",
    ["ws_live_" + "0" * 63, "ws_live_" + "0" * 65, "ws_live_" + "A" * 64, "WS_LIVE_" + "0" * 64,
     "ws_test_" + "0" * 64, "ws_live_" + "0" * 64 + "\n", " ws_live_" + "0" * 64, "ws_live_" + "g" * 64,
     "ws_live_" + "٣" * 64, b"ws_live_" + b"0" * 64, None, 42, "ws_live_" + "0" * 10_000],
)
def test_not_well_formed(bad: object) -> None:
    assert not is_well_formed(bad)


# -- identifiers --------------------------------------------------------------------------------------


@settings(deadline=None)
@given(well_formed)
def test_ident_forms(key: str) -> None:
    assert parse_ident(key).key_hash == hash_key(key)
    assert parse_ident(f" {key}\n").key_hash == hash_key(key)
    assert parse_ident(hash_key(key)).key_hash == hash_key(key)
    for display in (f"{key[:12]}\u2026{key[-4:]}", f"{key[:12]}...{key[-4:]}"):
        ident = parse_ident(display)
        assert (ident.key_hash, ident.prefix, ident.last4) == (None, key[:12], key[-4:])
    for n in range(9, 13):
        ident = parse_ident(key[:n])
        assert (ident.key_hash, ident.prefix, ident.last4) == (None, key[:n], None)


@settings(deadline=None)
@given(st.text(max_size=120))
def test_ident_parsing_never_crashes_and_never_echoes_a_long_value(text: str) -> None:
    try:
        parse_ident(text)
    except ConfigError as e:
        message = str(e)
        assert "\n" not in message
        if len(text.strip()) > 16:
            assert text.strip() not in message


def test_record_display_and_states() -> None:
    key = "ws_live_1a2b" + "0" * 56 + "9f3c"
    record = KeyRecord(
        key_hash=hash_key(key), endpoint="demo", kind="api", plan="pro", prefix=key[:12], last4=key[-4:],
        created_at=NOW, expires_at=NOW + 10,
    )
    assert record.display == "ws_live_1a2b\u20269f3c"
    assert [record.state(NOW), record.state(NOW + 10)] == ["active", "expired"]
    public = record.public_dict(NOW)
    assert "key_hash" not in public and record.key_hash not in repr(public)
    with pytest.raises(ConfigError):
        KeyRecord(key_hash="x", endpoint="demo", kind="api", plan="pro", prefix=key[:12], last4="9f3c",
                  created_at=NOW)
    with pytest.raises(ConfigError):
        KeyRecord(key_hash=hash_key(key), endpoint="demo", kind="root", plan="pro",  # type: ignore[arg-type]
                  prefix=key[:12], last4="9f3c", created_at=NOW)


# -- flag parsing -------------------------------------------------------------------------------------

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@settings(deadline=None)
@given(st.integers(min_value=1, max_value=5000), st.sampled_from(sorted(UNITS)))
def test_duration_round_trip(n: int, unit: str) -> None:
    assert parse_duration(f"{n}{unit}") == n * UNITS[unit]
    assert parse_expires(f"{n}{unit}", now=NOW) == NOW + n * UNITS[unit]


@settings(deadline=None)
@given(st.text(max_size=40))
def test_parsers_reject_garbage_with_one_line(text: str) -> None:
    for parse in (parse_duration, parse_rate, parse_daily_cap, lambda t: parse_expires(t, now=NOW)):
        try:
            parse(text)
        except ConfigError as e:
            assert "\n" not in str(e)


@pytest.mark.parametrize("text", ["", "24", "h", "-1h", "1.5.h", "1 y", "24hours", "1e3s", "9999999999d", "36501d", "nan"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_duration(text)


def test_expires_forms() -> None:
    assert parse_expires("never", now=NOW) is None
    assert parse_expires("NEVER", now=NOW) is None
    assert parse_expires("2030-01-01", now=NOW) == datetime(2030, 1, 1, tzinfo=UTC).timestamp()
    assert parse_expires("2030-01-01T06:00:00Z", now=NOW) == datetime(2030, 1, 1, 6, tzinfo=UTC).timestamp()
    assert parse_expires("2030-01-01T08:00+02:00", now=NOW) == datetime(2030, 1, 1, 6, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    "text", ["0", "0s", "2020-01-01", "2030-02-30", "2030-01-01T06:00:00", "tomorrow", "30", "-30d", "1/1/2030"]
)
def test_bad_expires(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_expires(text, now=NOW)


@pytest.mark.parametrize(
    ("text", "per_min"),
    [("60/min", 60), ("60/m", 60), ("2/s", 120), ("1/sec", 60), ("120/hour", 2), ("1440/day", 1),
     ("0.5/min", 0.5), (" 10 / minute ", 10)],
)
def test_rates(text: str, per_min: float) -> None:
    assert parse_rate(text) == pytest.approx(per_min)


@pytest.mark.parametrize("text", ["60", "0/min", "60/fortnight", "/min", "-1/min", "1e3/min", "abc", "99999999999/s"])
def test_bad_rates(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_rate(text)


@settings(deadline=None)
@given(st.integers(min_value=1, max_value=10**12))
def test_daily_cap_round_trip(n: int) -> None:
    assert parse_daily_cap(str(n)) == n


@pytest.mark.parametrize("text", ["0", "-1", "1.5", "ten", "", "1e6", "10000000000000"])
def test_bad_daily_caps(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_daily_cap(text)


@pytest.mark.parametrize("parse", [parse_duration, parse_rate, parse_daily_cap])
def test_only_ascii_digits(parse: object) -> None:
    assert callable(parse)
    for text in ("٣h", "٣/min", "٣", "３０d"):
        with pytest.raises(ConfigError):
            parse(text)
