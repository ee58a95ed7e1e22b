"""The settings table: the seed's keys and defaults, bad values as warnings."""

from __future__ import annotations

from ratecared.settings import Settings, parse


def test_missing_keys_take_the_seed_defaults() -> None:
    settings, warnings = parse({})
    assert settings == Settings()
    assert (settings.retention_days, settings.failure_threshold, settings.open_seconds,
            settings.half_open_requests, settings.warming_enabled) == (30, 5, 600, 3, False)
    assert warnings == []


def test_values_are_parsed() -> None:
    settings, warnings = parse({
        "cache-statistics-retention-days": "60", "cache-cleanup-enabled": "0", "cache-warming-enabled": "1",
        "cache-warming-widget-count": "20", "circuit-breaker-enabled": "0",
        "circuit-breaker-failure-threshold": "3", "circuit-breaker-timeout-seconds": "300",
        "circuit-breaker-half-open-requests": "1", "circuit-breaker-platforms": "booking, agoda",
    }, ("booking", "agoda", "expedia"))
    assert warnings == []
    assert settings == Settings(60, False, True, 20, False, 3, 300.0, 1, frozenset({"booking", "agoda"}))


def test_bad_values_warn_with_key_and_value_and_use_the_default() -> None:
    settings, warnings = parse({
        "circuit-breaker-failure-threshold": "five",
        "circuit-breaker-timeout-seconds": "-10",
        "cache-cleanup-enabled": "maybe",
        "cache-statistics-retention-days": "30",
    })
    assert settings == Settings()
    texts = sorted(str(w) for w in warnings)
    assert texts == [
        "setting cache-cleanup-enabled='maybe' is not 0 or 1; using the default",
        "setting circuit-breaker-failure-threshold='five' is not a whole number; using the default",
        "setting circuit-breaker-timeout-seconds='-10' is out of range 1..86400; using the default",
    ]


def test_unknown_platforms_in_the_list_are_ignored_with_a_warning() -> None:
    settings, warnings = parse({"circuit-breaker-platforms": "booking,nosuch"}, ("booking", "agoda"))
    assert settings.breaker_platforms == frozenset({"booking"})
    assert [str(w) for w in warnings] == [
        "setting circuit-breaker-platforms='booking,nosuch' names unknown platform nosuch; using booking"]


def test_a_platform_list_naming_none_known_guards_all_and_says_so() -> None:
    settings, warnings = parse({"circuit-breaker-platforms": "nosuch,other"}, ("booking", "agoda"))
    assert settings.breaker_platforms is None
    assert [str(w) for w in warnings] == [
        "setting circuit-breaker-platforms='nosuch,other' names unknown platforms nosuch, other; "
        "using the default (all)"]


def test_all_means_every_platform() -> None:
    assert parse({"circuit-breaker-platforms": "all"})[0].breaker_platforms is None


def test_the_outcome_and_back_off_keys_are_parsed_and_checked() -> None:
    settings, warnings = parse({"circuit-breaker-slow-call-ms": "2500", "circuit-breaker-backoff-multiplier": "1.5",
                                "circuit-breaker-max-open-seconds": "7200"})
    assert warnings == []
    assert (settings.slow_call_ms, settings.backoff_multiplier, settings.max_open_seconds) == (2500, 1.5, 7200.0)
    settings, warnings = parse({"circuit-breaker-slow-call-ms": "-1", "circuit-breaker-backoff-multiplier": "nan",
                                "circuit-breaker-max-open-seconds": "0"})
    assert (settings.slow_call_ms, settings.backoff_multiplier, settings.max_open_seconds) == (0, 1.0, 3600.0)
    assert sorted(str(w) for w in warnings) == [
        "setting circuit-breaker-backoff-multiplier='nan' is out of range 1..10; using the default",
        "setting circuit-breaker-max-open-seconds='0' is out of range 1..604800; using the default",
        "setting circuit-breaker-slow-call-ms='-1' is out of range 0..3600000; using the default",
    ]
    assert str(parse({"circuit-breaker-backoff-multiplier": "double"})[1][0]) == (
        "setting circuit-breaker-backoff-multiplier='double' is not a number; using the default")
