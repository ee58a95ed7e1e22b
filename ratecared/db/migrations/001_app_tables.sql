-- The web app's tables that ratecared reads and trims. IF NOT EXISTS: on a
-- production database the app's own migrations have usually created them.
CREATE TABLE IF NOT EXISTS settings (
    `key` VARCHAR(100) NOT NULL PRIMARY KEY,
    `value` TEXT,
    updated_at DATETIME
){{TABLE_OPTIONS}};

CREATE TABLE IF NOT EXISTS widgets (
    id INT NOT NULL PRIMARY KEY,
    name VARCHAR(255) NOT NULL,
    active TINYINT NOT NULL DEFAULT 1
){{TABLE_OPTIONS}};

CREATE TABLE IF NOT EXISTS api_requests (
    id {{AUTO_ID}},
    widget_id INT NOT NULL,
    platform VARCHAR(32) NULL,
    status_code SMALLINT NOT NULL,
    response_time_ms INT NOT NULL,
    cache_hit TINYINT NOT NULL DEFAULT 0,
    created_at DATETIME NOT NULL
){{TABLE_OPTIONS}};

CREATE INDEX idx_api_requests_created_at ON api_requests (created_at);

CREATE INDEX idx_api_requests_widget_created ON api_requests (widget_id, created_at);

CREATE TABLE IF NOT EXISTS cache (
    id {{AUTO_ID}},
    cache_key VARCHAR(191) NOT NULL,
    widget_id INT NULL,
    payload MEDIUMTEXT,
    created_at DATETIME NOT NULL,
    expires_at DATETIME NOT NULL
){{TABLE_OPTIONS}};

CREATE UNIQUE INDEX uq_cache_key ON cache (cache_key);

CREATE INDEX idx_cache_expires_at ON cache (expires_at);
