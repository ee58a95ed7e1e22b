-- An operator's hold on a breaker (DESIGN §7): the state it keeps, until when
-- (wall clock, UTC), why and who; NULL when there is none.
ALTER TABLE circuit_breaker_state ADD COLUMN hold_state VARCHAR(16) NULL;
ALTER TABLE circuit_breaker_state ADD COLUMN hold_until DATETIME(3) NULL;
ALTER TABLE circuit_breaker_state ADD COLUMN hold_reason VARCHAR(255) NULL;
ALTER TABLE circuit_breaker_state ADD COLUMN hold_by VARCHAR(255) NULL;

-- The audit trail: one row per transition and per operator action, trimmed
-- after circuit-breaker-events-retention-days. `who` is "daemon" or the peer
-- as SO_PEERCRED gave it: "alice (uid 1000)".
CREATE TABLE IF NOT EXISTS circuit_breaker_events (
    id {{AUTO_ID}},
    at DATETIME(3) NOT NULL,
    host VARCHAR(255) NOT NULL,
    platform VARCHAR(64) NULL,
    action VARCHAR(16) NOT NULL,
    old_state VARCHAR(16) NULL,
    new_state VARCHAR(16) NULL,
    reason VARCHAR(255) NOT NULL,
    who VARCHAR(255) NOT NULL
){{TABLE_OPTIONS}};

CREATE INDEX idx_circuit_breaker_events_at ON circuit_breaker_events (at);

CREATE INDEX idx_circuit_breaker_events_platform_at ON circuit_breaker_events (platform, at);
