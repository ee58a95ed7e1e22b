"""The maintenance jobs, by the names the config, the socket and ratecarectl use."""

from __future__ import annotations

from ratecared.job_contract import Disabled, Job
from ratecared.jobs import aggregate_statistics, cleanup_expired_cache, warm_cache

JOBS: dict[str, Job] = {
    "aggregate_statistics": aggregate_statistics.run,
    "cleanup_expired_cache": cleanup_expired_cache.run,
    "warm_cache": warm_cache.run,
}

# The jobs that settings can turn off.
DISABLED_BY: dict[str, Disabled] = {
    "cleanup_expired_cache": cleanup_expired_cache.disabled,
    "warm_cache": warm_cache.disabled,
}
