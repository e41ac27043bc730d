"""Slows down password guessing from an address without ever locking an account for anyone else.

Two limits, both counted before the password is checked (`attempt`), in one atomic step per
window, so a burst of concurrent guesses cannot all slip past while Argon2 runs:

- per address: every login attempt from one client address (a practice behind one NAT shares
  it, hence the generous numbers);
- per account and address: the attempts at one account from one address, forgotten when the
  right password arrives from there.

An attacker's wrong passwords from one address slow down only that address; the account's owner
logs in from theirs as usual. Nothing is ever counted per account alone. Keys hold a digest of
the email, never the email, and are the same for existing and unknown emails, so a 429 tells
nothing about which accounts exist. IPv6 clients are counted per /64, the block one subscriber
usually gets, so walking through one's own addresses gains nothing.
"""

from __future__ import annotations

import hashlib
import ipaddress

from app.ratelimit import Policy, RateLimiter

ADDRESS = Policy("login-address", "30/minute;300/hour")
ACCOUNT_ADDRESS = Policy("login-account-address", "5/minute;20/hour;100/day")


def account_key(email: str) -> str:
    return hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]


def address_key(address: str) -> str:
    """The address as throttles count it: IPv4 as is, IPv6 as its /64."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:64]
    if ip.version == 6:
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


class LoginThrottle:
    def __init__(self, limiter: RateLimiter) -> None:
        self._limiter = limiter

    async def attempt(self, email: str, address: str) -> None:
        """Count this attempt before the password is checked; 429 with `Retry-After` if over."""
        where = address_key(address)
        await self._limiter.enforce(ADDRESS, where)
        await self._limiter.enforce(ACCOUNT_ADDRESS, account_key(email), where)

    async def succeeded(self, email: str, address: str) -> None:
        """The right password from this address forgives its earlier attempts at the account."""
        await self._limiter.clear(ACCOUNT_ADDRESS, account_key(email), address_key(address))
