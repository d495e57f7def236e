"""Per-key request rate limits: one token bucket per API key. Pure (the clock is passed in).

Used by the ingress (router_service.guard). A bucket holds up to ``burst`` tokens and refills at
``rate_per_s``; a request takes one token or is refused with the time until one is there,
which becomes the 429's Retry-After. Limits hold per ingress replica: with N replicas a key
can get up to N times its rate (docs/security.md).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TokenBucket:
    rate_per_s: float
    burst: int
    tokens: float
    updated: float

    @classmethod
    def full(cls, rate_per_s: float, burst: int, now: float) -> TokenBucket:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("a token bucket needs rate_per_s > 0 and burst >= 1")
        return cls(rate_per_s, burst, float(burst), now)

    def take(self, now: float) -> float:
        """Takes one token: 0.0 when granted, else the seconds until one is available."""
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(float(self.burst), self.tokens + elapsed * self.rate_per_s)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate_per_s


class RateLimiter:
    """Buckets by key name; the set of names is bounded by the configured keys (or is the one
    name "anonymous" when auth is off, which makes the limit global). ``rate_per_s`` None: no
    default limit, only keys with their own limit are limited."""

    def __init__(self, rate_per_s: float | None, burst: int = 10) -> None:
        if rate_per_s is not None:
            TokenBucket.full(rate_per_s, burst, 0.0)  # validates
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, name: str, now: float, rate_per_s: float | None = None,
             burst: int | None = None) -> float:
        """0.0 when the request may go, else the seconds to wait (per-key overrides apply)."""
        rate = rate_per_s or self.rate_per_s
        if rate is None:
            return 0.0
        size = burst or self.burst
        bucket = self._buckets.get(name)
        if bucket is None or (bucket.rate_per_s, bucket.burst) != (rate, size):
            bucket = self._buckets[name] = TokenBucket.full(rate, size, now)
        return bucket.take(now)
