-- When a daemon first ran on this database: a slot missed while the daemon
-- was down runs at start, but slots before this first start never do
-- (DESIGN §6). One row, written by the first daemon that starts. A database
-- that already has runs takes its first run's start, so that upgrading
-- changes nothing about which slots count as missed.
CREATE TABLE IF NOT EXISTS ratecared_database (
    id INT NOT NULL PRIMARY KEY,
    first_started_at DATETIME(3) NOT NULL,
    first_host VARCHAR(255) NOT NULL
){{TABLE_OPTIONS}};

INSERT INTO ratecared_database (id, first_started_at, first_host)
SELECT 1, started_at, host FROM job_runs
WHERE NOT EXISTS (SELECT 1 FROM ratecared_database)
ORDER BY started_at, id LIMIT 1;

-- A run's last progress (its rows and details are written as it goes): a
-- run killed with kill -9 is recorded as ending there, not at the next start.
ALTER TABLE job_runs ADD COLUMN progress_at DATETIME(3) NULL;
