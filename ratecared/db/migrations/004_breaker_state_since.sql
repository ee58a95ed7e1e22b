-- When each breaker's state began (wall clock, UTC), so that its time in the state carries on across a restart.
ALTER TABLE circuit_breaker_state ADD COLUMN state_since DATETIME(3) NULL;
