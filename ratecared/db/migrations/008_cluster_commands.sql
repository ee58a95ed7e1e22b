-- Operator actions meant for every host (`--cluster`, DESIGN §5): each daemon
-- applies the rows it has not acknowledged yet and acknowledges each one. A
-- hold keeps its end as a wall time (UTC), so a host that applies it later
-- holds for what is left.
CREATE TABLE IF NOT EXISTS circuit_breaker_commands (
    id {{AUTO_ID}},
    at DATETIME(3) NOT NULL,
    host VARCHAR(255) NOT NULL,
    action VARCHAR(16) NOT NULL,
    platform VARCHAR(64) NULL,
    hold_state VARCHAR(16) NULL,
    hold_until DATETIME(3) NULL,
    reason VARCHAR(255) NOT NULL,
    who VARCHAR(255) NOT NULL
){{TABLE_OPTIONS}};

CREATE INDEX idx_circuit_breaker_commands_at ON circuit_breaker_commands (at);

CREATE TABLE IF NOT EXISTS circuit_breaker_command_acks (
    command_id BIGINT NOT NULL,
    host VARCHAR(255) NOT NULL,
    applied_at DATETIME(3) NOT NULL,
    result VARCHAR(255) NOT NULL,
    PRIMARY KEY (command_id, host)
){{TABLE_OPTIONS}};
