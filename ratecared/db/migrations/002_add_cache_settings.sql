-- The seed's migration: the settings rows with their defaults, and the daily summary.
INSERT INTO settings (`key`, `value`, updated_at)
SELECT k, v, CURRENT_TIMESTAMP FROM (
    SELECT 'cache-statistics-retention-days' AS k, '30' AS v
    UNION ALL SELECT 'cache-cleanup-enabled', '1'
    UNION ALL SELECT 'cache-warming-enabled', '0'
    UNION ALL SELECT 'cache-warming-widget-count', '10'
    UNION ALL SELECT 'circuit-breaker-enabled', '1'
    UNION ALL SELECT 'circuit-breaker-failure-threshold', '5'
    UNION ALL SELECT 'circuit-breaker-timeout-seconds', '600'
    UNION ALL SELECT 'circuit-breaker-half-open-requests', '3'
    UNION ALL SELECT 'circuit-breaker-platforms', 'all'
) AS defaults
WHERE NOT EXISTS (SELECT 1 FROM settings s WHERE s.`key` = defaults.k);

CREATE TABLE IF NOT EXISTS api_statistics_summary (
    stat_date DATE NOT NULL PRIMARY KEY,
    total_requests BIGINT NOT NULL,
    cache_hits BIGINT NOT NULL,
    cache_misses BIGINT NOT NULL,
    error_count BIGINT NOT NULL,
    avg_response_ms DOUBLE NOT NULL,
    max_response_ms INT NOT NULL,
    unique_widgets INT NOT NULL,
    updated_at DATETIME NOT NULL
){{TABLE_OPTIONS}};
