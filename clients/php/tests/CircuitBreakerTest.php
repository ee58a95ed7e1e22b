<?php

declare(strict_types=1);

namespace RateCare\Tests;

use PHPUnit\Framework\TestCase;
use RateCare\BreakerOpen;
use RateCare\CircuitBreaker;
use RateCare\DaemonError;
use RateCare\DaemonUnreachable;
use RateCare\Decision;

/** What a platform call throws in these tests: anything but the client's own exceptions. */
final class PlatformDown extends \Exception
{
}

/** A platform's HTTP answer as a PSR-7 client returns it: the two methods call() reads. */
final class PlatformResponse
{
    /** @param array<string, string> $headers */
    public function __construct(private readonly int $status, private readonly array $headers = [])
    {
    }

    public function getStatusCode(): int
    {
        return $this->status;
    }

    public function getHeaderLine(string $name): string
    {
        return $this->headers[$name] ?? '';
    }
}

/** What Guzzle throws for an HTTP error: the exception carries the response. */
final class PlatformHttpError extends \RuntimeException
{
    public function __construct(private readonly PlatformResponse $response)
    {
        parent::__construct("HTTP {$response->getStatusCode()}");
    }

    public function getResponse(): PlatformResponse
    {
        return $this->response;
    }
}

/**
 * The client against real daemons that tests/test_php_client.py starts:
 * RATECARE_TEST_SOCKET has the default settings (a breaker stays open 600 s),
 * RATECARE_TEST_SOCKET_SHORT_OPEN has circuit-breaker-timeout-seconds = 1,
 * RATECARE_TEST_SOCKET_SHORT_LEASE a permit lease of 50 ms.
 */
final class CircuitBreakerTest extends TestCase
{
    private const PLATFORMS = ['booking', 'expedia', 'agoda', 'hotels', 'trivago', 'tripadvisor', 'google'];
    private const FAILURE_THRESHOLD = 5;
    // Only a hung daemon comes near these: waits poll, and end as soon as the condition holds.
    private const HUNG_DAEMON_SECONDS = 60.0;

    private CircuitBreaker $breaker;

    protected function setUp(): void
    {
        $this->breaker = self::clientOf('RATECARE_TEST_SOCKET');
        $this->breaker->reset();
    }

    public function testFailuresOpenTheBreakerAndThenItRefusesCallsWithoutRunningThem(): void
    {
        for ($i = 0; $i < self::FAILURE_THRESHOLD; $i++) {
            self::failOnce($this->breaker, 'booking');
        }

        $refused = $this->breaker->acquire('booking');
        self::assertFalse($refused->allowed);
        self::assertSame('open', $refused->state);
        self::assertNull($refused->permit);
        self::assertGreaterThan(0.0, $refused->retryAfter);
        self::assertLessThanOrEqual(600.0, $refused->retryAfter);

        $ran = false;
        try {
            $this->breaker->call('booking', function () use (&$ran): void {
                $ran = true;
            });
            self::fail('call() ran on an open breaker');
        } catch (BreakerOpen $open) {
            self::assertStringStartsWith('circuit breaker for booking is open; retry in ', $open->getMessage());
            self::assertSame('open', $open->decision->state);
        }
        self::assertFalse($ran, 'the operation ran although the breaker refused the call');

        $fallback = $this->breaker->call('booking', fn () => 'fresh rates',
            whenRefused: fn (Decision $decision) => "cached rates ({$decision->state})");
        self::assertSame('cached rates (open)', $fallback);

        $status = $this->breaker->status();
        self::assertSame([7, 6, 1, 0], [$status['total_platforms'], $status['closed'], $status['open'],
                                         $status['half_open']]);
        self::assertSame(['open', self::FAILURE_THRESHOLD],
            [self::entry($status, 'booking')['state'], self::entry($status, 'booking')['failure_count']]);

        self::assertSame(['reset' => ['booking'], 'changed' => ['booking'], 'held' => []],
            $this->breaker->reset('booking'));
        self::assertTrue($this->breaker->acquire('booking')->allowed);
    }

    public function testAnOpenBreakerGoesHalfOpenAndSuccessfulTrialCallsCloseIt(): void
    {
        $breaker = self::clientOf('RATECARE_TEST_SOCKET_SHORT_OPEN');
        $breaker->reset();
        for ($i = 0; $i < self::FAILURE_THRESHOLD; $i++) {
            $answer = $breaker->report($breaker->acquire('booking'), false, 5003.0);
            self::assertTrue($answer['counted']);
        }
        self::assertContains(self::entry($breaker->status(), 'booking')['state'], ['open', 'half_open']);

        self::waitFor(fn () => self::entry($breaker->status(), 'booking')['state'] === 'half_open',
            'booking half-open');
        for ($trial = 0; $trial < 3; $trial++) {
            self::assertSame('rates', $breaker->call('booking', fn () => 'rates'));
        }

        self::assertSame('closed', self::entry($breaker->status(), 'booking')['state']);
    }

    public function testAWidgetsSevenPlatformsAreAskedAndReportedInOneRoundTripEach(): void
    {
        $decisions = $this->breaker->acquireMany(self::PLATFORMS);
        self::assertSame(self::PLATFORMS, array_keys($decisions));
        foreach ($decisions as $platform => $decision) {
            self::assertSame([$platform, true, 'closed'], [$decision->platform, $decision->allowed, $decision->state]);
        }
        self::assertCount(7, array_unique(array_map(fn (Decision $d) => $d->permit, $decisions)));

        $answers = $this->breaker->reportMany(
            array_map(fn (Decision $d) => [$d, true, 120.5], array_values($decisions)));
        self::assertSame(self::PLATFORMS, array_column($answers, 'platform'));
        self::assertSame(array_fill(0, 7, true), array_column($answers, 'counted'));

        for ($i = 0; $i < self::FAILURE_THRESHOLD; $i++) {
            self::failOnce($this->breaker, 'agoda');
        }
        $decisions = $this->breaker->acquireMany(self::PLATFORMS);
        self::assertSame([false, 'open'], [$decisions['agoda']->allowed, $decisions['agoda']->state]);
        self::assertGreaterThan(0.0, $decisions['agoda']->retryAfter);
        $others = array_diff(self::PLATFORMS, ['agoda']);
        foreach ($others as $platform) {
            self::assertTrue($decisions[$platform]->allowed, "{$platform} refused beside an open agoda");
        }

        // Only the six permitted calls are reported: a refused decision has nothing to report.
        $answers = $this->breaker->reportMany(array_map(fn (Decision $d) => [$d, false], array_values($decisions)));
        self::assertSame(array_values($others), array_column($answers, 'platform'));
    }

    public function testCallReportsAnExceptionAsAFailureAndRethrowsIt(): void
    {
        $before = self::entry($this->breaker->status(), 'expedia');
        $thrown = new PlatformDown('expedia answered 502');
        try {
            $this->breaker->call('expedia', fn () => throw $thrown);
            self::fail('call() swallowed the exception');
        } catch (PlatformDown $caught) {
            self::assertSame($thrown, $caught);
        }
        $after = self::entry($this->breaker->status(), 'expedia');
        self::assertSame(1, $after['failure_count']);
        self::assertSame($before['total_failures'] + 1, $after['total_failures']);

        self::assertSame('rates', $this->breaker->call('expedia', fn () => 'rates'));
        $after = self::entry($this->breaker->status(), 'expedia');
        self::assertSame([0, $before['total_successes'] + 1], [$after['failure_count'], $after['total_successes']]);
    }

    public function testCallKeepsThePlatformsAnswerWhenTheDaemonRefusesItsReport(): void
    {
        $breaker = self::clientOf('RATECARE_TEST_SOCKET_SHORT_LEASE');
        // A platform slower than the permit's lease: the report is refused...
        $decision = $breaker->acquire('booking');
        usleep(200_000);
        try {
            $breaker->report($decision, true, 200.0);
            self::fail('a report past its lease was taken');
        } catch (DaemonError $refused) {
            self::assertSame([409, 'unknown_permit'], [$refused->httpStatus, $refused->errorCode]);
        }
        // ...and call() still gives the app the platform's answer, or its exception.
        self::assertSame('rates', $breaker->call('booking', function (): string {
            usleep(200_000);
            return 'rates';
        }));
        $thrown = new PlatformDown('booking answered 502');
        try {
            $breaker->call('booking', function () use ($thrown): never {
                usleep(200_000);
                throw $thrown;
            });
            self::fail('call() swallowed the exception');
        } catch (PlatformDown $caught) {
            self::assertSame($thrown, $caught);
        }
    }

    public function testTheDaemonsErrorsComeWithTheirCodeAndMessage(): void
    {
        try {
            $this->breaker->acquire('myspace');
            self::fail('an unknown platform was acquired');
        } catch (DaemonError $error) {
            self::assertSame([404, 'unknown_platform'], [$error->httpStatus, $error->errorCode]);
            self::assertStringContainsString('myspace', $error->errorMessage);
        }

        $madeUp = new Decision('booking', true, 'closed', str_repeat('0', 24), null);
        try {
            $this->breaker->report($madeUp, true, 10.0);
            self::fail('a permit the daemon never issued was accepted');
        } catch (DaemonError $error) {
            self::assertSame([409, 'unknown_permit'], [$error->httpStatus, $error->errorCode]);
        }
    }

    public function testWithNoDaemonRaiseThrowsDaemonUnreachableNamingTheSocket(): void
    {
        $breaker = new CircuitBreaker(self::missingSocket(), whenUnreachable: 'raise');
        foreach ([fn () => $breaker->acquire('booking'), fn () => $breaker->acquireMany(self::PLATFORMS),
                  fn () => $breaker->call('booking', fn () => 'rates'), fn () => $breaker->status()] as $use) {
            try {
                $use();
                self::fail('no DaemonUnreachable with no daemon');
            } catch (DaemonUnreachable $unreachable) {
                self::assertSame("cannot reach ratecared: no socket at {$breaker->socketPath}",
                    $unreachable->getMessage());
            }
        }
    }

    public function testWithNoDaemonOpenLetsCallsThrough(): void
    {
        $breaker = new CircuitBreaker(self::missingSocket(), whenUnreachable: 'open');
        $decision = $breaker->acquire('booking');
        self::assertSame([true, 'unknown', null], [$decision->allowed, $decision->state, $decision->permit]);
        self::assertStringContainsString('no socket at', $decision->unreachable);
        self::assertNull($breaker->report($decision, true, 10.0));
        self::assertSame('rates', $breaker->call('booking', fn () => 'rates'));
        $decisions = $breaker->acquireMany(self::PLATFORMS);
        self::assertSame(array_fill_keys(self::PLATFORMS, true),
            array_map(fn (Decision $d) => $d->allowed, $decisions));
        self::assertSame([], $breaker->reportMany(
            array_map(fn (Decision $d) => [$d, true, 1.0], array_values($decisions))));
        // Status and reset are the operator's: there is nothing to let through.
        $this->expectException(DaemonUnreachable::class);
        $breaker->status();
    }

    public function testWithNoDaemonClosedRefusesCallsAndSaysTheDaemonIsUnreachable(): void
    {
        $breaker = new CircuitBreaker(self::missingSocket(), whenUnreachable: 'closed');
        self::assertFalse($breaker->acquire('booking')->allowed);
        $ran = false;
        try {
            $breaker->call('booking', function () use (&$ran): void {
                $ran = true;
            });
            self::fail('call() went through with no daemon and whenUnreachable closed');
        } catch (BreakerOpen $refused) {
            self::assertSame("calls to booking are refused: cannot reach ratecared: "
                . "no socket at {$breaker->socketPath}, and whenUnreachable is 'closed'", $refused->getMessage());
        }
        self::assertFalse($ran);
        self::assertSame('unknown', $breaker->call('booking', fn () => 'rates',
            whenRefused: fn (Decision $decision) => $decision->state));
    }

    public function testADaemonThatDoesNotAnswerIsUnreachableAfterTheTimeout(): void
    {
        $path = sys_get_temp_dir() . '/rc-silent-' . bin2hex(random_bytes(6)) . '.sock';
        // Listening but never accepting: the connection is made, and no answer ever comes.
        $listener = stream_socket_server("unix://{$path}", $errno, $error);
        self::assertNotFalse($listener, $error);
        try {
            $breaker = new CircuitBreaker($path, timeout: 0.2);
            $started = hrtime(true);
            try {
                $breaker->acquire('booking');
                self::fail('an answer came from a socket that never answers');
            } catch (DaemonUnreachable $unreachable) {
                self::assertSame("ratecared at {$path} did not answer in 0.2 s", $unreachable->getMessage());
            }
            self::assertLessThan(self::HUNG_DAEMON_SECONDS, (hrtime(true) - $started) / 1e9);

            $open = new CircuitBreaker($path, whenUnreachable: 'open', timeout: 0.2);
            self::assertTrue($open->acquire('booking')->allowed);
        } finally {
            fclose($listener);
            unlink($path);
        }
    }

    public function testAnUnknownPolicyIsRefusedAtOnce(): void
    {
        $this->expectException(\InvalidArgumentException::class);
        new CircuitBreaker(whenUnreachable: 'ignore');
    }

    public function testCallReportsA429WithItsRetryAfterAndTheBreakerOpensUntilThen(): void
    {
        $response = $this->breaker->call('booking', fn () => new PlatformResponse(429, ['Retry-After' => '120']));
        self::assertSame(429, $response->getStatusCode());
        $booking = self::entry($this->breaker->status(), 'booking');
        self::assertSame('open', $booking['state']);
        self::assertLessThanOrEqual(120.0, $booking['retry_after']);
        self::assertGreaterThan(60.0, $booking['retry_after']);
        self::assertSame('rate limited by the platform: Retry-After 120', $booking['last_reason']);

        // Thrown, as Guzzle throws it, the same.
        try {
            $this->breaker->call('agoda', fn () => throw new PlatformHttpError(
                new PlatformResponse(429, ['Retry-After' => '30'])));
            self::fail('call() swallowed the exception');
        } catch (PlatformHttpError) {
        }
        self::assertSame('rate limited by the platform: Retry-After 30',
            self::entry($this->breaker->status(), 'agoda')['last_reason']);
    }

    public function testCallReportsA404AsIgnoredAndTimeoutsApartFromFailures(): void
    {
        $before = self::entry($this->breaker->status(), 'expedia')['outcomes'];
        $this->breaker->call('expedia', fn () => new PlatformResponse(404));
        foreach ([new \RuntimeException('Operation timed out after 2001 milliseconds with 0 bytes received'),
                  new PlatformHttpError(new PlatformResponse(503)), new PlatformDown('refused')] as $thrown) {
            try {
                $this->breaker->call('expedia', fn () => throw $thrown);
                self::fail('call() swallowed the exception');
            } catch (\Throwable $caught) {
                self::assertSame($thrown, $caught);
            }
        }
        $this->breaker->call('expedia', fn () => new PlatformResponse(200));
        $expedia = self::entry($this->breaker->status(), 'expedia');
        $after = $expedia['outcomes'];
        self::assertSame([1, 1, 2, 1], [$after['ignored'] - $before['ignored'], $after['timeout'] - $before['timeout'],
                                        $after['failure'] - $before['failure'], $after['success'] - $before['success']]);
        self::assertSame('closed', $expedia['state']);
    }

    public function testClassifyMapsWhatCallCannotSeeForItself(): void
    {
        $before = self::entry($this->breaker->status(), 'hotels')['outcomes']['ignored'];
        $rates = $this->breaker->call('hotels', fn () => ['rates' => []],
            classify: fn (mixed $result) => is_array($result) && $result['rates'] === [] ? 'ignored' : null);
        self::assertSame(['rates' => []], $rates);
        self::assertSame($before + 1, self::entry($this->breaker->status(), 'hotels')['outcomes']['ignored']);

        $this->breaker->call('hotels', fn () => 'slow down', classify: fn (mixed $result) => ['rate_limited', '45']);
        $hotels = self::entry($this->breaker->status(), 'hotels');
        self::assertSame(['open', 'rate limited by the platform: Retry-After 45'],
            [$hotels['state'], $hotels['last_reason']]);
    }

    public function testReportTakesAnOutcomeAndRefusesOneItDoesNotKnow(): void
    {
        $answer = $this->breaker->report($this->breaker->acquire('trivago'), 'rate_limited', 12.5, 300);
        self::assertSame(['counted' => true, 'state' => 'open'], $answer);
        $answers = $this->breaker->reportMany([[$this->breaker->acquire('google'), 'timeout', 10000.0],
                                               [$this->breaker->acquire('google'), 'ignored']]);
        self::assertSame([true, true], array_column($answers, 'counted'));
        $this->expectException(\InvalidArgumentException::class);
        $this->breaker->report($this->breaker->acquire('google'), 'crashed');
    }

    private static function clientOf(string $variable): CircuitBreaker
    {
        $path = getenv($variable);
        if ($path === false || $path === '') {
            self::fail("{$variable} must name a running daemon's socket (tests/test_php_client.py sets it)");
        }
        return new CircuitBreaker($path);
    }

    private static function missingSocket(): string
    {
        return sys_get_temp_dir() . '/rc-none-' . bin2hex(random_bytes(6)) . '/rc.sock';
    }

    private static function failOnce(CircuitBreaker $breaker, string $platform): void
    {
        try {
            $breaker->call($platform, fn () => throw new PlatformDown("{$platform} is down"));
            self::fail('call() swallowed the exception');
        } catch (PlatformDown) {
        }
    }

    /**
     * @param array<string, mixed> $status
     * @return array<string, mixed>
     */
    private static function entry(array $status, string $platform): array
    {
        foreach ($status['platforms'] as $entry) {
            if ($entry['platform'] === $platform) {
                return $entry;
            }
        }
        self::fail("{$platform} is not in the status");
    }

    private static function waitFor(callable $condition, string $what): void
    {
        $deadline = hrtime(true) + (int) (self::HUNG_DAEMON_SECONDS * 1e9);
        while (!$condition()) {
            if (hrtime(true) > $deadline) {
                self::fail("{$what} not seen within " . self::HUNG_DAEMON_SECONDS . ' s');
            }
            usleep(50_000);
        }
    }
}
