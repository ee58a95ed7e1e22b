-- Each breaker's back-off level (trips in a row, decaying while closed) and
-- its calls counted by outcome (DESIGN §7): timeouts, rate-limited answers
-- and slow successes are failures counted apart; ignored calls count as neither.
ALTER TABLE circuit_breaker_state ADD COLUMN backoff_level INT NOT NULL DEFAULT 0;
ALTER TABLE circuit_breaker_state ADD COLUMN total_timeouts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE circuit_breaker_state ADD COLUMN total_rate_limited BIGINT NOT NULL DEFAULT 0;
ALTER TABLE circuit_breaker_state ADD COLUMN total_slow BIGINT NOT NULL DEFAULT 0;
ALTER TABLE circuit_breaker_state ADD COLUMN total_ignored BIGINT NOT NULL DEFAULT 0;
