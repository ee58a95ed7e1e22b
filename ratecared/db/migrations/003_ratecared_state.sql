-- ratecared's own tables: per-widget daily counts, breaker snapshots, job runs.
CREATE TABLE IF NOT EXISTS api_statistics_widget_daily (
    stat_date DATE NOT NULL,
    widget_id INT NOT NULL,
    requests BIGINT NOT NULL,
    PRIMARY KEY (stat_date, widget_id)
){{TABLE_OPTIONS}};

CREATE TABLE IF NOT EXISTS circuit_breaker_state (
    platform VARCHAR(64) NOT NULL,
    host VARCHAR(255) NOT NULL,
    state VARCHAR(16) NOT NULL,
    generation BIGINT NOT NULL,
    consecutive_failures INT NOT NULL,
    trip_count INT NOT NULL,
    opened_at DATETIME(3) NULL,
    open_until DATETIME(3) NULL,
    total_requests BIGINT NOT NULL,
    total_successes BIGINT NOT NULL,
    total_failures BIGINT NOT NULL,
    total_rejected BIGINT NOT NULL,
    last_reason VARCHAR(255) NULL,
    updated_at DATETIME(3) NOT NULL,
    PRIMARY KEY (platform, host)
){{TABLE_OPTIONS}};

CREATE TABLE IF NOT EXISTS job_runs (
    id {{AUTO_ID}},
    job VARCHAR(64) NOT NULL,
    slot DATETIME NULL,
    `trigger` VARCHAR(16) NOT NULL,
    host VARCHAR(255) NOT NULL,
    run_id VARCHAR(64) NOT NULL,
    status VARCHAR(16) NOT NULL,
    started_at DATETIME(3) NOT NULL,
    finished_at DATETIME(3) NULL,
    rows_affected BIGINT NOT NULL DEFAULT 0,
    details TEXT,
    error TEXT
){{TABLE_OPTIONS}};

CREATE UNIQUE INDEX uq_job_runs_job_slot ON job_runs (job, slot);

CREATE INDEX idx_job_runs_job_started ON job_runs (job, started_at);
