<?php

declare(strict_types=1);

/*
 * The RateCare app's client for ratecared's circuit breakers, over the
 * daemon's Unix socket with ext-curl alone:
 *
 *     require_once 'RateCare/CircuitBreaker.php';   // /usr/share/php is on Debian's include_path
 *
 *     $breaker = new \RateCare\CircuitBreaker(whenUnreachable: 'open');
 *     $rates = $breaker->call('booking', fn () => fetchBookingRates(),
 *                             whenRefused: fn (\RateCare\Decision $refused) => null);
 *
 * call() tells the daemon how the call went: a PSR-7 response (or an
 * exception carrying one, as Guzzle's do) with 429 is rate_limited with its
 * Retry-After, with 404 ignored (the platform does not list the hotel), with
 * 5xx a failure; an exception that says it timed out is a timeout, any other
 * a failure. `classify:` maps the rest: a result or exception to an outcome.
 *
 * The file holds the client, the decision it hands back and its exceptions,
 * so that one require_once is all an app needs.
 */

namespace RateCare;

/** Base of everything this client throws. */
class ClientError extends \RuntimeException
{
}

/** No daemon answers on the socket: missing, refused, timed out, hung up, or busy. */
class DaemonUnreachable extends ClientError
{
}

/** The socket or the daemon refused this user: join the socket's group (or the admin group). */
class PermissionDenied extends ClientError
{
}

/** The daemon answered with its error envelope; its code and message are kept. */
class DaemonError extends ClientError
{
    public function __construct(
        public readonly int $httpStatus,
        public readonly string $errorCode,
        public readonly string $errorMessage,
    ) {
        parent::__construct("{$errorMessage} ({$errorCode}, HTTP {$httpStatus})");
    }
}

/** call() was refused: the breaker is not closed, or the daemon is unreachable and whenUnreachable is 'closed'. */
class BreakerOpen extends ClientError
{
    public function __construct(public readonly Decision $decision)
    {
        if ($decision->unreachable !== null) {
            $message = "calls to {$decision->platform} are refused: {$decision->unreachable}, "
                . "and whenUnreachable is 'closed'";
        } else {
            $retry = $decision->retryAfter === null ? '' : "; retry in {$decision->retryAfter} s";
            $message = "circuit breaker for {$decision->platform} is {$decision->state}{$retry}";
        }
        parent::__construct($message);
    }
}

/** The daemon's answer to an acquire, or, when it was unreachable, the caller's policy's. */
final class Decision
{
    public function __construct(
        public readonly string $platform,
        public readonly bool $allowed,
        public readonly string $state,
        public readonly ?string $permit,
        public readonly ?float $retryAfter,
        /** Why the daemon could not be asked; null when it answered. */
        public readonly ?string $unreachable = null,
    ) {
    }
}

final class CircuitBreaker
{
    public const DEFAULT_SOCKET = '/run/ratecared/ratecared.sock';
    /** What a report may say a call came to; true and false are the seed's success flag. */
    public const OUTCOMES = ['success', 'failure', 'timeout', 'rate_limited', 'ignored'];
    private const UNREACHABLE_POLICIES = ['raise', 'open', 'closed'];
    private const CURLE_OPERATION_TIMEDOUT = 28;

    public readonly string $socketPath;
    private ?\CurlHandle $handle = null;

    /**
     * @param string|null $socketPath      the daemon's socket; RATECARE_SOCKET, then the package's path, by default
     * @param string      $whenUnreachable 'raise' throws DaemonUnreachable; 'open' lets calls through (the
     *                                     platform is tried, as before ratecared); 'closed' refuses them
     * @param float       $connectTimeout  seconds to get a connection
     * @param float       $timeout         seconds for the whole exchange
     */
    public function __construct(
        ?string $socketPath = null,
        public readonly string $whenUnreachable = 'raise',
        public readonly float $connectTimeout = 0.5,
        public readonly float $timeout = 2.0,
    ) {
        if (!in_array($whenUnreachable, self::UNREACHABLE_POLICIES, true)) {
            throw new \InvalidArgumentException(
                "whenUnreachable must be 'raise', 'open' or 'closed', not '{$whenUnreachable}'");
        }
        $this->socketPath = $socketPath ?? (getenv('RATECARE_SOCKET') ?: self::DEFAULT_SOCKET);
    }

    /** Whether $platform may be called now. */
    public function acquire(string $platform): Decision
    {
        try {
            $data = $this->request('POST', '/api/v1/circuit-breaker/' . rawurlencode($platform) . '/acquire');
        } catch (DaemonUnreachable $unreachable) {
            return $this->degraded($platform, $unreachable);
        }
        return self::decision($platform, $data);
    }

    /**
     * Every platform of a widget in one round trip.
     *
     * @param list<string> $platforms
     * @return array<string, Decision> keyed by platform, in the order asked
     */
    public function acquireMany(array $platforms): array
    {
        try {
            $data = $this->request('POST', '/api/v1/circuit-breaker/acquire', ['platforms' => $platforms]);
        } catch (DaemonUnreachable $unreachable) {
            return array_combine($platforms,
                array_map(fn (string $p) => $this->degraded($p, $unreachable), $platforms));
        }
        $decisions = [];
        foreach ($data as $platform => $answer) {
            $decisions[$platform] = self::decision((string) $platform, $answer);
        }
        return $decisions;
    }

    /**
     * How a permitted call went: {"counted","state"} (with "reason" and "message" when not counted).
     * $outcome is true, false or one of OUTCOMES; $retryAfter goes with 'rate_limited': seconds, or the
     * platform's Retry-After header as it came.
     * Null for a decision without a permit (refused, or decided while the daemon was unreachable),
     * and when the daemon cannot be reached unless whenUnreachable is 'raise'.
     *
     * @return array<string, mixed>|null
     */
    public function report(Decision $decision, bool|string $outcome, float $durationMs = 0.0,
                           string|int|float|null $retryAfter = null): ?array
    {
        if ($decision->permit === null) {
            return null;
        }
        $body = ['permit' => $decision->permit] + self::reportBody($outcome, $durationMs, $retryAfter);
        try {
            return $this->request('POST', '/api/v1/circuit-breaker/' . rawurlencode($decision->platform) . '/report',
                $body);
        } catch (DaemonUnreachable $unreachable) {
            return $this->whenUnreachable === 'raise' ? throw $unreachable : null;
        }
    }

    /**
     * Several reports in one round trip; decisions without a permit are left out.
     *
     * @param list<array{0: Decision, 1: bool|string, 2?: float, 3?: string|int|float|null}> $outcomes
     *        [decision, outcome, duration in ms, retry after]
     * @return list<array<string, mixed>> one answer per report sent, each naming its platform
     */
    public function reportMany(array $outcomes): array
    {
        $reports = [];
        foreach ($outcomes as $outcome) {
            $decision = $outcome[0];
            if ($decision->permit !== null) {
                $reports[] = ['platform' => $decision->platform, 'permit' => $decision->permit]
                    + self::reportBody($outcome[1], $outcome[2] ?? 0.0, $outcome[3] ?? null);
            }
        }
        if ($reports === []) {
            return [];
        }
        try {
            return $this->request('POST', '/api/v1/circuit-breaker/report', ['reports' => $reports]);
        } catch (DaemonUnreachable $unreachable) {
            return $this->whenUnreachable === 'raise' ? throw $unreachable : [];
        }
    }

    /**
     * Acquire, run $operation, report how it went, and return what it returned.
     *
     * What it returned, or the exception it threw, says how it went: $classify's answer first when
     * given (an outcome, [outcome, retry after], or null to leave it to the rules below), then
     * outcomeOf()'s. An exception is rethrown after the report; should that report fail too, the
     * operation's exception is still the one thrown, being the one that matters.
     * When the call is refused, $operation is not run: call() returns $whenRefused($decision) if
     * given (a fallback, such as rates from the cache), and throws BreakerOpen otherwise.
     */
    public function call(string $platform, callable $operation, ?callable $whenRefused = null,
                         ?callable $classify = null): mixed
    {
        $decision = $this->acquire($platform);
        if (!$decision->allowed) {
            return $whenRefused !== null ? $whenRefused($decision) : throw new BreakerOpen($decision);
        }
        $started = hrtime(true);
        try {
            $result = $operation();
        } catch (\Throwable $failure) {
            $this->reportForCall($decision, $failure, $classify, $started);
            throw $failure;
        }
        $this->reportForCall($decision, $result, $classify, $started);
        return $result;
    }

    /**
     * How a platform call went, from what it returned or threw: [outcome, retry after or null].
     *
     * A PSR-7 response (any object with getStatusCode() and getHeaderLine()), or an exception whose
     * getResponse() gives one: 429 is rate_limited with its Retry-After header, 404 ignored, 5xx a failure.
     * An exception that timed out (curl's error 28 in Guzzle's handler context, a *TimeoutException, or
     * "timed out" in its message) is a timeout; any other exception a failure; anything else a success.
     *
     * @return array{0: string, 1: ?string}
     */
    public static function outcomeOf(mixed $subject): array
    {
        $response = $subject;
        if ($subject instanceof \Throwable) {
            $response = method_exists($subject, 'getResponse') ? $subject->getResponse() : null;
        }
        if (is_object($response) && method_exists($response, 'getStatusCode')) {
            $status = (int) $response->getStatusCode();
            if ($status === 429) {
                $header = method_exists($response, 'getHeaderLine')
                    ? trim((string) $response->getHeaderLine('Retry-After')) : '';
                return ['rate_limited', $header === '' ? null : $header];
            }
            if ($status === 404) {
                return ['ignored', null];
            }
            if ($status >= 500) {
                return ['failure', null];
            }
        }
        if ($subject instanceof \Throwable) {
            return [self::timedOut($subject) ? 'timeout' : 'failure', null];
        }
        return ['success', null];
    }

    private static function timedOut(\Throwable $failure): bool
    {
        if (method_exists($failure, 'getHandlerContext')
            && ($failure->getHandlerContext()['errno'] ?? null) === self::CURLE_OPERATION_TIMEDOUT) {
            return true;
        }
        return str_ends_with(get_class($failure), 'TimeoutException')
            || stripos($failure->getMessage(), 'timed out') !== false;
    }

    /**
     * A report the daemon refuses (the permit's lease ran out, the daemon restarted and its permits died with
     * it) must not turn the platform's answer, or its exception, into another.
     */
    private function reportForCall(Decision $decision, mixed $subject, ?callable $classify, int $started): void
    {
        $mapped = $classify !== null ? $classify($subject) : null;
        [$outcome, $retryAfter] = match (true) {
            $mapped === null => self::outcomeOf($subject),
            is_array($mapped) => [$mapped[0], $mapped[1] ?? null],
            default => [$mapped, null],
        };
        try {
            $this->report($decision, $outcome, self::millisecondsSince($started), $retryAfter);
        } catch (ClientError) {
        }
    }

    /** @return array<string, mixed> */
    private static function reportBody(bool|string $outcome, float $durationMs,
                                       string|int|float|null $retryAfter): array
    {
        if (is_string($outcome) && !in_array($outcome, self::OUTCOMES, true)) {
            throw new \InvalidArgumentException(
                'outcome must be true, false or one of ' . implode(', ', self::OUTCOMES) . ", not '{$outcome}'");
        }
        $body = is_bool($outcome) ? ['success' => $outcome] : ['outcome' => $outcome];
        $body['duration_ms'] = round($durationMs, 1);
        if ($retryAfter !== null) {
            $body['retry_after'] = $retryAfter;
        }
        return $body;
    }

    /**
     * The seed's status: total_platforms, closed, open, half_open, total_requests, total_failures, platforms[].
     *
     * @return array<string, mixed>
     */
    public function status(): array
    {
        return $this->request('GET', '/api/v1/circuit-breaker/status');
    }

    /**
     * Close one breaker, or all (root or the admin group only).
     *
     * @return array{reset: list<string>, changed: list<string>, held: list<string>} the breakers covered,
     *         those it closed, and those an operator's hold kept as they were
     */
    public function reset(?string $platform = null): array
    {
        return $this->request('POST', '/api/v1/circuit-breaker/reset',
            $platform === null ? new \stdClass() : ['platform' => $platform]);
    }

    private function degraded(string $platform, DaemonUnreachable $unreachable): Decision
    {
        if ($this->whenUnreachable === 'raise') {
            throw $unreachable;
        }
        return new Decision($platform, $this->whenUnreachable === 'open', 'unknown', null, null,
            $unreachable->getMessage());
    }

    /** @param array<string, mixed> $answer */
    private static function decision(string $platform, array $answer): Decision
    {
        return new Decision($platform, $answer['allowed'], $answer['state'], $answer['permit'],
            $answer['retry_after'] === null ? null : (float) $answer['retry_after']);
    }

    private static function millisecondsSince(int $startedNs): float
    {
        return (hrtime(true) - $startedNs) / 1e6;
    }

    /** One exchange; returns the success envelope's data or throws. */
    private function request(string $method, string $path, mixed $body = null): mixed
    {
        // One handle for the client's life: curl keeps the connection alive between calls.
        $this->handle ??= curl_init();
        curl_reset($this->handle);
        curl_setopt_array($this->handle, [
            CURLOPT_UNIX_SOCKET_PATH => $this->socketPath,
            CURLOPT_URL => 'http://localhost' . $path,
            CURLOPT_RETURNTRANSFER => true,
            CURLOPT_CONNECTTIMEOUT_MS => (int) ceil($this->connectTimeout * 1000),
            CURLOPT_TIMEOUT_MS => (int) ceil($this->timeout * 1000),
            // Without an empty Expect, curl waits for "100 Continue" before a larger batch's body.
            CURLOPT_HTTPHEADER => ['Content-Type: application/json', 'Expect:'],
        ]);
        if ($method === 'POST') {
            curl_setopt($this->handle, CURLOPT_POSTFIELDS,
                $body === null ? '' : json_encode($body, JSON_THROW_ON_ERROR));
        }
        $raw = curl_exec($this->handle);
        if ($raw === false) {
            throw $this->transportError($this->handle);
        }
        $status = curl_getinfo($this->handle, CURLINFO_RESPONSE_CODE);
        try {
            $envelope = json_decode($raw, true, 64, JSON_THROW_ON_ERROR);
        } catch (\JsonException) {
            throw new DaemonError($status, 'bad_reply', 'not JSON: ' . substr($raw, 0, 200));
        }
        if (($envelope['status'] ?? null) === 'success') {
            return $envelope['data'];
        }
        $code = $envelope['error']['code'] ?? 'error';
        $message = $envelope['error']['message'] ?? substr($raw, 0, 200);
        if ($status === 403) {
            throw new PermissionDenied($message);
        }
        if ($status === 503 && $code === 'busy') {
            // Answered but not served: to the whenUnreachable policy, as good as unreachable.
            throw new DaemonUnreachable($message);
        }
        throw new DaemonError($status, $code, $message);
    }

    private function transportError(\CurlHandle $handle): ClientError
    {
        // curl's own text names "localhost port 80", which misleads on a Unix socket.
        $path = $this->socketPath;
        $errno = curl_getinfo($handle, CURLINFO_OS_ERRNO);
        return match (true) {
            $errno === 13 /* EACCES */ => new PermissionDenied("permission denied on {$path}: join the socket's group"),
            $errno === 2 /* ENOENT */ => new DaemonUnreachable("cannot reach ratecared: no socket at {$path}"),
            $errno === 111 /* ECONNREFUSED */ =>
                new DaemonUnreachable("cannot reach ratecared at {$path}: connection refused"),
            curl_errno($handle) === CURLE_OPERATION_TIMEDOUT =>
                new DaemonUnreachable("ratecared at {$path} did not answer in {$this->timeout} s"),
            curl_errno($handle) === CURLE_GOT_NOTHING =>
                new DaemonUnreachable("ratecared at {$path} closed the connection without answering"),
            default => new DaemonUnreachable("cannot reach ratecared at {$path}: " . curl_error($handle)),
        };
    }
}
