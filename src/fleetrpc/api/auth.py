"""Authentication as ThingsBoard does it: JWT pairs, the header forms, its
error codes; plus what ThingsBoard leaves to a proxy: slowed and locked
logins (with the users' repository), per-tenant and per-user rate limits.

Tokens (THINGSBOARD-NOTES.md §2.3): HS512, claims ``sub`` (email),
``userId``, ``scopes`` (one authority), ``sessionId`` (new per login),
``firstName``, ``lastName``, ``enabled``, ``isPublic``, ``tenantId``,
``customerId`` (the null UUID where there is none), ``iss``, ``iat``,
``exp``.  A refresh token carries ``scopes: ["REFRESH_TOKEN"]`` and a
``jti``; refreshing reloads the user, so a disabled or deleted user cannot
refresh.  Key rotation: tokens are signed with ``jwt.secret`` and verified
against it and every ``jwt.previous_secrets``.

Failed logins are counted and accounts locked by the users' repository, in
the database (``server/identity.py``), so a lockout holds on every node and
across restarts; it tells the login handler how long to delay the answer.

Errors, exactly as ThingsBoard answers them (§1.1) -- its UI refreshes its
token only on errorCode 11, so 10 and 11 must not be mixed up:

==========================================  ======  ==========================================
situation                                   code    message
==========================================  ======  ==========================================
no token / not ``Bearer``                   10      Authentication failed
expired token                               11      Token has expired
signature that matches no key               11      Token has expired (ThingsBoard's quirk:
                                                    ``SignatureException`` -> expired)
malformed token, wrong issuer, no claims    10      Invalid username or password
wrong password / unknown user               10      Invalid username or password
disabled account                            10      User account is not active
locked account                              10      User account is locked due to security policy
==========================================  ======  ==========================================

Validated access tokens are cached (decoding one costs ~60 us): a hit is
one dict lookup and an expiry check.

Revocation (ThingsBoard's TokenOutdatingService): deleting a user,
disabling it or changing its password voids every access and refresh
token issued to it before that moment.  :class:`TokenService` keeps, per
revoked user, the time its tokens are valid since (``_valid_since``, from
the ``user_token_revocation`` table); a token issued earlier is refused
like an expired one (401, errorCode 11; a refresh token: "Token is
outdated", errorCode 10, as ThingsBoard answers).  A login's or a
refresh's tokens count as issued when it began reading the user (before
the password is verified), so a revocation committed while it runs voids
them too.  The check costs one more dict lookup per request.  The table
reaches the dictionary at once for this node's changes, through a
PostgreSQL notification for the other nodes' (milliseconds), and by
reading the table every ``cluster.poll_interval_s`` for anything a
notification missed (:func:`setup` starts that).

API keys (ThingsBoard 4.3, ``X-Authorization: ApiKey <value>``, or
``Authorization:``): :class:`ApiKeyAuth`.  A key stands for its user, with
the user's authority, tenant and customer, while the key exists, is enabled
and not expired and the user exists, is enabled and has been activated (has
a password: ThingsBoard's ``userCredentialsEnabled``).  Only the value's
SHA-256 is stored (``store/entities/api_keys.py``); a verified key is kept
in memory by that digest, so a request costs one SHA-256 of ~90 bytes
(about a microsecond) and a dict lookup; a key not in memory costs two
indexed reads (the key, its user).  A cached key is dropped at once when
it is disabled or deleted on this node (a listener), on another node (a
PostgreSQL notification), or when its user is revoked anywhere (the
revocations above); and it is read again every ``cluster.poll_interval_s``
whatever happens, which catches a lost notification or a change made by
another process.  A refused value is remembered too, with its refusal
(by its digest, for ``UNKNOWN_KEY_TTL_S``, at most ``UNKNOWN_KEY_CACHE_SIZE``
of them): one that matches no key, or a key that is disabled or expired; a
client repeating one costs no query.  A key created or enabled on this node
is usable at once (that clears them), one created or enabled on another node
after ``UNKNOWN_KEY_TTL_S`` at worst.  (A refusal for the key's user, disabled
or not activated, is not remembered: nothing tells this node when a user is
enabled again.)  Refusals, as ThingsBoard's
``ApiKeyAuthenticationProvider`` answers them (all errorCode 10): unknown key or user "Invalid username or
password", disabled key, disabled or not yet activated user "User account
is not active", expired key "API key is expired".  A token's issue time is in milliseconds (the
private ``iatMs`` claim; ThingsBoard's own ``iat`` is in whole seconds, too
coarse to tell a token issued just before a password change from the pair
that change returns).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import jwt
import msgspec
from aiohttp import web
from multidict import istr

from ..config.server import AuthSection, JwtSection, RateLimitsSection
from ..wire import BAD_JSON
from .errors import ApiError, ErrorBody, ErrorCode
from .keys import CTX, PRINCIPAL

__all__ = [
    "NULL_UUID",
    "AUTHORITIES",
    "LoginRefused",
    "ApiKeyAuth",
    "Principal",
    "TokenService",
    "RateLimiter",
    "UserDirectory",
    "authenticate_request",
    "bearer_token",
    "public",
    "setup",
]

log = logging.getLogger("fleetrpc.auth")

NULL_UUID = "13814000-1dd2-11b2-8080-808080808080"
SYS_ADMIN, TENANT_ADMIN, CUSTOMER_USER = "SYS_ADMIN", "TENANT_ADMIN", "CUSTOMER_USER"
AUTHORITIES = frozenset({SYS_ADMIN, TENANT_ADMIN, CUSTOMER_USER})
REFRESH_TOKEN = "REFRESH_TOKEN"
#: The scope of an activation token (``GET /api/user/{id}/activationLink``).
ACTIVATE = "ACTIVATE"

BAD_CREDENTIALS = "Invalid username or password"
EXPIRED = "Token has expired"
AUTH_FAILED = "Authentication failed"
NOT_ACTIVE = "User account is not active"
LOCKED = "User account is locked due to security policy"
OUTDATED = "Token is outdated"
API_KEY_EXPIRED = "API key is expired"


def public(handler):
    """Mark a handler as reachable without a token (login, refresh, ...)."""
    handler.fleetrpc_public = True
    return handler


class Principal(msgspec.Struct, frozen=True, gc=False):
    """Who makes a request: ``request[PRINCIPAL]`` (api/keys.py) on every /api request."""

    user_id: str
    tenant_id: str
    customer_id: str
    authority: str
    email: str = ""
    first_name: str | None = None
    last_name: str | None = None
    session_id: str = ""
    #: epoch seconds when the token stops being valid
    expires: float = 0.0
    #: epoch ms when the token was issued (revocation compares it)
    issued_ms: int = 0

    @property
    def is_sysadmin(self) -> bool:
        return self.authority == SYS_ADMIN

    @property
    def is_tenant_admin(self) -> bool:
        return self.authority == TENANT_ADMIN

    @property
    def is_customer_user(self) -> bool:
        return self.authority == CUSTOMER_USER


class LoginRefused(Exception):
    """A login or refresh that must fail; ``str(exc)`` is ThingsBoard's
    message, ``delay`` how long (s) to wait before answering (slows
    guessing; grows with the failures in a row)."""

    def __init__(self, message: str, *, delay: float = 0.0) -> None:
        super().__init__(message)
        self.delay = delay


class UserDirectory(Protocol):
    """What authentication needs from the users' repository (the server
    adapts ``UserRepository`` to this; tests may pass a fake)."""

    async def authenticate(self, email: str, password: str) -> Any:
        """The user with that email and password; raises :class:`LoginRefused`
        with ThingsBoard's message (bad credentials, not active, locked)."""

    async def by_id(self, user_id: str) -> Any | None:
        """The user, or None.  A user has ``id``, ``email``, ``authority``,
        ``tenant_id``, ``customer_id``, ``first_name``, ``last_name``,
        ``enabled`` and ``to_thingsboard()``."""


# -- tokens ----------------------------------------------------------------------------


class TokenService:
    """Issues and checks ThingsBoard's JWT pairs."""

    def __init__(self, settings: JwtSection, secret: str, *, clock=time.time) -> None:
        self.settings = settings
        self._key = secret.encode()
        self._keys = [self._key] + [s.encode() for s in settings.previous_secrets]
        self._clock = clock
        self._cache: dict[str, Principal] = {}
        self._cache_size = settings.cache_size
        self.cache_hits = 0
        self.decodes = 0
        # user id -> epoch ms: the user's tokens issued before are void
        self._valid_since: dict[str, int] = {}
        self._revocation_listeners: list[Callable[[str, int], Any]] = []
        #: Revocations learnt (of this node and others), for metrics and tests.
        self.revocations = 0

    # -- revocation --

    def revoke(self, user_id: str, valid_since_ms: int) -> None:
        """The user's tokens issued before ``valid_since_ms`` are void (an
        earlier time than one already known changes nothing).  Listeners
        (:meth:`on_revoked`: the console's open streams) hear each change."""
        if valid_since_ms <= self._valid_since.get(user_id, 0):
            return
        self._valid_since[user_id] = valid_since_ms
        self.revocations += 1
        for fn in self._revocation_listeners:
            try:
                fn(user_id, valid_since_ms)
            except Exception:
                log.exception("revocation listener %r failed", fn)

    def forget_revocations(self, before_ms: int) -> None:
        """Drop what voids only tokens that have expired anyway."""
        for user_id in [u for u, t in self._valid_since.items() if t < before_ms]:
            del self._valid_since[user_id]

    def on_revoked(self, fn: Callable[[str, int], Any]) -> Callable[[str, int], Any]:
        """Call ``fn(user_id, valid_since_ms)`` on every revocation learnt."""
        self._revocation_listeners.append(fn)
        return fn

    def remove_revocation_listener(self, fn: Callable[[str, int], Any]) -> None:
        self._revocation_listeners.remove(fn)

    def is_outdated(self, user_id: str, issued_ms: int) -> bool:
        """Whether a token of ``user_id`` issued at ``issued_ms`` was revoked."""
        since = self._valid_since.get(user_id)
        return since is not None and issued_ms < since

    def still_valid(self, p: Principal) -> bool:
        """Whether ``p``'s token is neither expired nor revoked (an open
        stream asks now and then)."""
        return self._clock() < p.expires and not self.is_outdated(p.user_id, p.issued_ms)

    @property
    def horizon_s(self) -> int:
        """The longest a token lives: older revocations void nothing."""
        return max(self.settings.access_ttl_s, self.settings.refresh_ttl_s)

    # -- issuing --

    def issue_time(self) -> float:
        """Now, for :meth:`issue`: read it *before* reading the user the
        tokens are for (see there)."""
        return self._clock()

    def issue(self, user: Any, issued_at: float | None = None) -> dict[str, str]:
        """``{"token": ..., "refreshToken": ...}`` for ``user`` (a new session).

        ``issued_at`` (epoch seconds, from :meth:`issue_time`): when the
        caller started reading ``user``; the tokens say they were issued
        then (``iat``, ``iatMs``; ``exp`` counts from it).  A revocation
        (password change, disabling, deletion) that commits after that read
        began records a later time, so it voids these tokens too; with the
        time of this call instead, one committing while the password was
        being verified would record an earlier time than the tokens' and
        leave them valid.  None: now (a user read after its own revocation)."""
        s = self.settings
        now_s = self._clock() if issued_at is None else issued_at
        now = int(now_s)
        issued_ms = int(now_s * 1000)
        session = str(uuid.uuid4())
        authority = str(getattr(user.authority, "value", user.authority))
        access = {
            "sub": user.email,
            "userId": str(user.id),
            "scopes": [authority],
            "sessionId": session,
            "firstName": getattr(user, "first_name", None),
            "lastName": getattr(user, "last_name", None),
            "enabled": bool(getattr(user, "enabled", True)),
            "isPublic": False,
            "tenantId": str(user.tenant_id or NULL_UUID),
            "customerId": str(user.customer_id or NULL_UUID),
            "iss": s.issuer,
            "iat": now,
            "iatMs": issued_ms,
            "exp": now + s.access_ttl_s,
        }
        refresh = {
            "sub": user.email,
            "userId": str(user.id),
            "scopes": [REFRESH_TOKEN],
            "sessionId": session,
            "isPublic": False,
            "jti": str(uuid.uuid4()),
            "iss": s.issuer,
            "iat": now,
            "iatMs": issued_ms,
            "exp": now + s.refresh_ttl_s,
        }
        return {
            "token": jwt.encode(access, self._key, algorithm="HS512"),
            "refreshToken": jwt.encode(refresh, self._key, algorithm="HS512"),
        }

    # -- checking --

    def _claims(self, token: str) -> dict[str, Any]:
        """Verified claims; raises ApiError 401 with errorCode 10 or 11."""
        self.decodes += 1
        expired = False
        for key in self._keys:
            try:
                return jwt.decode(
                    token, key, algorithms=["HS512"], issuer=self.settings.issuer,
                    options={"require": ["exp", "iat", "sub", "scopes", "userId"]},
                    leeway=0,
                )
            except jwt.InvalidSignatureError:
                continue  # maybe signed with a previous key
            except jwt.ExpiredSignatureError:
                expired = True
                break
            except (jwt.PyJWTError, UnicodeError):
                # UnicodeError: non-UTF-8 bytes in the header (aiohttp decodes
                # them to lone surrogates, which PyJWT cannot encode): no JWT.
                raise ApiError.unauthorized(BAD_CREDENTIALS) from None
        # Expired, or a signature no key matches: ThingsBoard answers both as
        # an expired token (JwtTokenFactory maps SignatureException so).
        if not expired:
            log.debug("token with a signature that matches no key")
        raise ApiError.unauthorized(EXPIRED, ErrorCode.JWT_TOKEN_EXPIRED)

    def authenticate(self, token: str) -> Principal:
        """The principal of an access token (cached); raises ApiError 401."""
        p = self._cache.get(token)
        if p is not None:
            if self._clock() < p.expires:
                since = self._valid_since.get(p.user_id)
                if since is None or p.issued_ms >= since:
                    self.cache_hits += 1
                    return p
            del self._cache[token]
            raise ApiError.unauthorized(EXPIRED, ErrorCode.JWT_TOKEN_EXPIRED)
        claims = self._claims(token)
        scopes = claims["scopes"]
        authority = scopes[0] if isinstance(scopes, list) and len(scopes) == 1 else None
        if authority not in AUTHORITIES:
            # A refresh token (or garbage scopes) is no access token.
            raise ApiError.unauthorized(AUTH_FAILED)
        tenant = claims.get("tenantId") or NULL_UUID
        customer = claims.get("customerId") or NULL_UUID
        if not isinstance(tenant, str) or not isinstance(customer, str) or not isinstance(claims["userId"], str):
            raise ApiError.unauthorized(BAD_CREDENTIALS)
        if not claims.get("enabled", True):
            raise ApiError.unauthorized(NOT_ACTIVE)
        p = Principal(
            user_id=claims["userId"], tenant_id=tenant, customer_id=customer, authority=authority,
            email=str(claims["sub"]), first_name=claims.get("firstName"), last_name=claims.get("lastName"),
            session_id=str(claims.get("sessionId", "")), expires=float(claims["exp"]),
            issued_ms=_issued_ms(claims),
        )
        if self.is_outdated(p.user_id, p.issued_ms):
            # ThingsBoard: JwtExpiredTokenException("Token is outdated") -> "Token has expired", 11
            raise ApiError.unauthorized(EXPIRED, ErrorCode.JWT_TOKEN_EXPIRED)
        if self._cache_size:
            if len(self._cache) >= self._cache_size:
                del self._cache[next(iter(self._cache))]  # the oldest entry
            self._cache[token] = p
        return p

    def activation_token(self, user_id: str) -> str:
        """A token that lets its bearer set the first password of ``user_id``
        (ThingsBoard keeps a random ``activateToken`` in the user's
        credentials; a signed one needs no table and stops working once
        the user has a password, since activation asks for a user without
        one).  Valid for ``jwt.activation_ttl_s``."""
        now = int(self._clock())
        claims = {"sub": user_id, "userId": user_id, "scopes": [ACTIVATE], "iss": self.settings.issuer,
                  "iat": now, "exp": now + self.settings.activation_ttl_s}
        return jwt.encode(claims, self._key, algorithm="HS512")

    def activation_subject(self, token: str) -> str | None:
        """The user id of a valid activation token, else None."""
        try:
            claims = self._claims(token)
        except ApiError:
            return None
        if claims["scopes"] != [ACTIVATE] or not isinstance(claims["userId"], str):
            return None
        return claims["userId"]

    def refresh_subject(self, token: str) -> str:
        """The user id of a valid refresh token; raises ApiError 401.  Says
        nothing about revocation: see :meth:`refresh_claims`."""
        return self.refresh_claims(token)[0]

    def refresh_claims(self, token: str) -> tuple[str, int]:
        """(user id, issued at in epoch ms) of a valid refresh token; raises ApiError 401."""
        claims = self._claims(token)
        if claims["scopes"] != [REFRESH_TOKEN] or not isinstance(claims["userId"], str):
            raise ApiError.unauthorized(AUTH_FAILED)
        return claims["userId"], _issued_ms(claims)


def _issued_ms(claims: dict[str, Any]) -> int:
    """When a token was issued, in epoch ms: ``iatMs``; ``iat`` (seconds)
    for a token without it (issued before revocation existed)."""
    ms = claims.get("iatMs")
    if isinstance(ms, int) and not isinstance(ms, bool):
        return ms
    iat = claims["iat"]
    return int(iat * 1000) if isinstance(iat, (int, float)) and not isinstance(iat, bool) else 0


def load_or_create_secret(data_dir: str | os.PathLike) -> str:
    """The generated signing key of an embedded server: created once (0600)
    in the data directory, so tokens outlive a restart."""
    path = os.path.join(data_dir, "jwt-secret")
    try:
        with open(path) as f:
            secret = f.read().strip()
        if len(secret) >= 64:
            return secret
    except FileNotFoundError:
        pass
    os.makedirs(data_dir, exist_ok=True)
    secret = os.urandom(48).hex()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return secret


# -- API keys ------------------------------------------------------------------------


#: How long a value that matched no key, or a disabled or expired key, is
#: refused without asking the database again (seconds): what a key created
#: or enabled on another node may wait.
UNKNOWN_KEY_TTL_S = 3.0
#: The most such values remembered (the oldest go first).
UNKNOWN_KEY_CACHE_SIZE = 4096


class _CachedKey:
    __slots__ = ("principal", "key_id", "deadline")

    def __init__(self, principal: Principal, key_id: str, deadline: float) -> None:
        self.principal = principal
        self.key_id = key_id
        #: epoch seconds: read the key again after (its expiry, or the next re-read)
        self.deadline = deadline


class ApiKeyAuth:
    """Verifies ``ApiKey`` credentials (see the module docstring): a
    bounded cache of verified keys by the value's digest in front of the
    keys' repository (``store/entities/api_keys.py``) and the users'."""

    def __init__(self, keys: Any, users: Any, *, recheck_s: float, cache_size: int, clock=time.time,
                 unknown_ttl_s: float = UNKNOWN_KEY_TTL_S,
                 unknown_cache_size: int = UNKNOWN_KEY_CACHE_SIZE) -> None:
        from ..store.entities.api_keys import hash_value

        self._hash = hash_value
        self.keys = keys
        self.users = users
        self._recheck_s = recheck_s
        self._cache_size = cache_size
        self._clock = clock
        self._cache: dict[str, _CachedKey] = {}
        # digest of a refused value (no key, a disabled or expired key) ->
        # (epoch seconds until which it is refused without a query, the
        # refusal); in insertion order, which is the order of the deadlines
        # (all live as long)
        self._refused: dict[str, tuple[float, str]] = {}
        self._unknown_ttl_s = unknown_ttl_s
        self._unknown_size = unknown_cache_size if unknown_ttl_s > 0 else 0
        # Bumped by every eviction: a verification that started before one
        # does not cache what it read (it may predate the change).
        self._generation = 0
        # Bumped by every creation or enabling on this node: a lookup that
        # started before one does not remember its refusal.
        self._creations = 0
        self.cache_hits = 0
        self.unknown_hits = 0
        self.lookups = 0

    def cached(self, value: str) -> Principal | None:
        """The principal of a key verified lately, else None (the caller
        then awaits :meth:`verify`)."""
        digest = self._hash(value)
        entry = self._cache.get(digest)
        if entry is None:
            return None
        if self._clock() < entry.deadline:
            self.cache_hits += 1
            return entry.principal
        del self._cache[digest]
        return None

    async def verify(self, value: str) -> Principal:
        """Read the key and its user; raises ApiError 401 (errorCode 10)."""
        generation, creations = self._generation, self._creations
        if not value:
            raise ApiError.unauthorized(BAD_CREDENTIALS)  # ThingsBoard: "Empty API key"
        digest = self._hash(value)
        refused = self._refused.get(digest)
        if refused is not None:
            if self._clock() < refused[0]:
                self.unknown_hits += 1
                raise ApiError.unauthorized(refused[1])
            del self._refused[digest]
        self.lookups += 1
        key = await self.keys.by_value(value)
        now = self._clock()
        refusal = (BAD_CREDENTIALS if key is None else NOT_ACTIVE if not key.enabled
                   else API_KEY_EXPIRED if key.expired(int(now * 1000)) else None)
        if refusal is not None:
            if self._unknown_size and creations == self._creations:
                self._remember_refused(digest, refusal)
            raise ApiError.unauthorized(refusal)
        assert key is not None
        user = await self.users.by_id(key.user_id)
        if user is None or str(user.tenant_id or NULL_UUID) != key.tenant_id:
            raise ApiError.unauthorized(BAD_CREDENTIALS)
        # ThingsBoard refuses a user whose credentials are not enabled: one
        # disabled, or one never activated (no password yet), as
        # userCredentialsEnabled says (DisabledException).
        if not getattr(user, "enabled", True) or not getattr(user, "has_password", True):
            raise ApiError.unauthorized(NOT_ACTIVE)
        expires = key.expiration_time / 1000 if key.expiration_time else float("inf")
        p = Principal(
            user_id=str(user.id), tenant_id=str(user.tenant_id or NULL_UUID),
            customer_id=str(user.customer_id or NULL_UUID),
            authority=str(getattr(user.authority, "value", user.authority)), email=user.email,
            first_name=getattr(user, "first_name", None), last_name=getattr(user, "last_name", None),
            session_id=f"apiKey:{key.id}", expires=expires, issued_ms=int(now * 1000),
        )
        if self._cache_size and generation == self._generation:
            if len(self._cache) >= self._cache_size:
                del self._cache[next(iter(self._cache))]  # the oldest entry
            self._cache[digest] = _CachedKey(p, key.id, min(expires, now + self._recheck_s))
        return p

    def _remember_refused(self, digest: str, refusal: str) -> None:
        now = self._clock()
        refused = self._refused
        # Drop the expired ones from the front, and the oldest when full.
        while refused:
            oldest = next(iter(refused))
            if len(refused) < self._unknown_size and refused[oldest][0] > now:
                break
            del refused[oldest]
        refused[digest] = (now + self._unknown_ttl_s, refusal)

    def key_created(self, key_id: str = "", user_id: str = "") -> None:
        """A key was created or enabled on this node: forget every refusal
        (its value may have been tried before it existed, or while disabled)."""
        self._creations += 1
        self._refused.clear()

    def _evict(self, test: Callable[[_CachedKey], bool]) -> None:
        self._generation += 1
        for digest in [d for d, e in self._cache.items() if test(e)]:
            del self._cache[digest]

    def key_changed(self, key_id: str, user_id: str = "") -> None:
        """A key was disabled or deleted (here or on another node)."""
        self._evict(lambda e: e.key_id == key_id)

    def user_revoked(self, user_id: str, valid_since_ms: int = 0) -> None:
        """A user was disabled, deleted or changed password: read its keys
        again (a new password leaves them valid, as in ThingsBoard)."""
        self._evict(lambda e: e.principal.user_id == user_id)

    def clear(self) -> None:
        """Forget every verified key (notifications may have been missed;
        the refusals stay: a missed stop leaves them refused)."""
        self._evict(lambda e: True)


# -- rate limits -----------------------------------------------------------------------


class _Bucket:
    __slots__ = ("tokens", "stamp")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class RateLimiter:
    """Token buckets per tenant and per user; 0 per second means unlimited."""

    def __init__(self, settings: RateLimitsSection, *, clock=time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self._tenants: dict[str, _Bucket] = {}
        self._users: dict[str, _Bucket] = {}
        self.enabled = settings.tenant_per_s > 0 or settings.user_per_s > 0

    @staticmethod
    def _take(buckets: dict[str, _Bucket], key: str, rate: float, burst: int, now: float) -> bool:
        b = buckets.get(key)
        if b is None:
            buckets[key] = _Bucket(burst - 1.0, now)
            return True
        b.tokens = min(burst, b.tokens + (now - b.stamp) * rate)
        b.stamp = now
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            return True
        return False

    def check(self, p: Principal) -> str | None:
        """None when allowed, else ThingsBoard's 429 message."""
        s = self.settings
        now = self._clock()
        if s.tenant_per_s > 0 and p.tenant_id != NULL_UUID and not self._take(
            self._tenants, p.tenant_id, s.tenant_per_s, s.tenant_burst, now
        ):
            return "Too many requests for current tenant!"
        if s.user_per_s > 0 and not self._take(self._users, p.user_id, s.user_per_s, s.user_burst, now):
            return "Too many requests for current user!"
        return None


# -- the request's principal ----------------------------------------------------------

_X_AUTHORIZATION = istr("X-Authorization")
_AUTHORIZATION = istr("Authorization")


def bearer_token(request: web.Request) -> str | None:
    headers = request.headers
    header = headers.get(_X_AUTHORIZATION) or headers.get(_AUTHORIZATION)
    if header is None or not header.startswith("Bearer "):
        return None
    return header[7:].strip() or None


_API_KEY = "ApiKey "


def authenticate_request(ctx: Any, request: web.Request) -> Principal | Awaitable[Principal]:
    """The caller of a non-public /api request (the request middleware,
    ``api/middleware.py``, sets it as ``request[PRINCIPAL]`` (api/keys.py)); raises
    ApiError 401, or 429 (errorCode 33) over a rate limit.  An API key not
    in memory gives an awaitable instead (it is read from the database)."""
    headers = request.headers
    header = headers.get(_X_AUTHORIZATION) or headers.get(_AUTHORIZATION)
    if header is None or not header.startswith("Bearer "):
        if header is not None and header.startswith(_API_KEY):
            return _api_key_principal(ctx, header[7:].strip())
        raise ApiError.unauthorized(AUTH_FAILED)
    token = header[7:].strip()
    if not token:
        raise ApiError.unauthorized(AUTH_FAILED)
    return _rate_limited(ctx, ctx.tokens.authenticate(token))


def _api_key_principal(ctx: Any, value: str) -> Principal | Awaitable[Principal]:
    keys: ApiKeyAuth | None = getattr(ctx, "api_key_auth", None)
    if keys is None:
        raise ApiError.unauthorized(AUTH_FAILED)
    principal = keys.cached(value) if value else None
    if principal is None:
        return _verified(ctx, keys, value)
    return _rate_limited(ctx, principal)


async def _verified(ctx: Any, keys: ApiKeyAuth, value: str) -> Principal:
    return _rate_limited(ctx, await keys.verify(value))


def _rate_limited(ctx: Any, principal: Principal) -> Principal:
    limiter = ctx.rate_limiter
    if limiter.enabled:
        message = limiter.check(principal)
        if message is not None:
            raise ApiError(429, message, ErrorCode.TOO_MANY_REQUESTS)
    return principal


# -- endpoints ---------------------------------------------------------------------------

_decode_obj = msgspec.json.Decoder(dict).decode


async def _json_object(request: web.Request) -> dict | None:
    try:
        return _decode_obj(await request.read())
    except BAD_JSON:
        return None


class LoginRequest(msgspec.Struct):
    username: str
    password: str


class RefreshTokenRequest(msgspec.Struct):
    refreshToken: str


class JwtPair(msgspec.Struct):
    token: str
    refreshToken: str


@public
async def login(request: web.Request) -> web.Response:
    """``POST /api/auth/login`` ``{"username", "password"}`` -> ``{"token", "refreshToken"}``."""
    ctx = request.app[CTX]
    body = await _json_object(request)
    if body is None:
        raise ApiError.unauthorized(AUTH_FAILED)  # "Invalid login request payload"
    email, password = body.get("username"), body.get("password")
    if not isinstance(email, str) or not isinstance(password, str) or not email or not password:
        raise ApiError.unauthorized(AUTH_FAILED)  # "Username or Password not provided"
    # Before the user is read: a revocation committed while the password is
    # verified must void the tokens this returns (TokenService.issue).
    issued_at = ctx.tokens.issue_time()
    try:
        user = await ctx.users.authenticate(email, password)
    except LoginRefused as exc:
        if exc.delay:
            await asyncio.sleep(exc.delay)  # slows guessing; a response delay, not synchronisation
        raise ApiError.unauthorized(str(exc)) from None
    return web.json_response(ctx.tokens.issue(user, issued_at))


@public
async def refresh(request: web.Request) -> web.Response:
    """``POST /api/auth/token`` ``{"refreshToken"}`` -> a new pair; the user
    is reloaded, so a disabled or deleted one cannot refresh."""
    ctx = request.app[CTX]
    body = await _json_object(request)
    token = body.get("refreshToken") if body is not None else None
    if not isinstance(token, str) or not token:
        raise ApiError.unauthorized(AUTH_FAILED)  # "Refresh token is not provided"
    user_id, issued_ms = ctx.tokens.refresh_claims(token)
    issued_at = ctx.tokens.issue_time()  # before the user is read, as in login
    user = await ctx.users.by_id(user_id)
    if user is None:
        raise ApiError.unauthorized(BAD_CREDENTIALS)
    if not getattr(user, "enabled", True):
        raise ApiError.unauthorized(NOT_ACTIVE)
    if ctx.tokens.is_outdated(user_id, issued_ms):
        # ThingsBoard's RefreshTokenAuthenticationProvider: CredentialsExpiredException
        raise ApiError.unauthorized(OUTDATED)
    return web.json_response(ctx.tokens.issue(user, issued_at))


async def current_user(request: web.Request) -> web.Response:
    """``GET /api/auth/user``: the user the token belongs to."""
    ctx = request.app[CTX]
    p: Principal = request[PRINCIPAL]
    user = await ctx.users.by_id(p.user_id)
    if user is None:
        raise ApiError.unauthorized(AUTH_FAILED)
    return web.json_response(user.to_thingsboard())


async def logout(request: web.Request) -> web.Response:
    """``POST /api/auth/logout``: as in ThingsBoard, the client forgets its
    token; the server only logs it."""
    p: Principal = request[PRINCIPAL]
    log.info("logout of %s (session %s)", p.email, p.session_id)
    return web.Response(status=200)


#: How often revocations older than the longest token lifetime are purged.
_PURGE_EVERY_S = 3600.0


async def _keep_revocations(app: web.Application) -> Any:
    """The application's lifetime: ``ctx.tokens`` learns every revocation
    (this node's at once, the others' by notification and by reading the
    table, see the module docstring); old ones are purged hourly.  A users'
    repository that records none (the REST bench's stand-in) is left out."""
    ctx = app[CTX]
    users, tokens = getattr(ctx, "users", None), getattr(ctx, "tokens", None)
    if tokens is None or not hasattr(users, "follow_revocations"):
        yield
        return
    users.add_revocation_listener(tokens.revoke)  # first: nothing revoked meanwhile is missed
    started = int(time.time() * 1000)
    horizon_ms = tokens.horizon_s * 1000
    try:
        await users.purge_revocations(started - horizon_ms)
        for user_id, since in (await users.revocations(started - horizon_ms)).items():
            tokens.revoke(user_id, since)
    except Exception:
        users.remove_revocation_listener(tokens.revoke)
        raise
    cluster = getattr(ctx.settings, "cluster", None)
    poll_s = getattr(cluster, "poll_interval_s", 5.0)

    async def purge() -> None:
        while True:
            await asyncio.sleep(_PURGE_EVERY_S)  # a period, not a synchronisation
            before = int(time.time() * 1000) - horizon_ms
            tokens.forget_revocations(before)
            try:
                await users.purge_revocations(before)
            except Exception as e:
                log.warning("could not purge old token revocations: %s", e)

    tasks = [asyncio.ensure_future(users.follow_revocations(tokens.revoke, poll_interval_s=poll_s,
                                                            since_ms=started)),
             asyncio.ensure_future(purge())]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        users.remove_revocation_listener(tokens.revoke)


async def _keep_api_keys(app: web.Application) -> Any:
    """The application's lifetime: ``ctx.api_keys`` (the repository) and
    ``ctx.api_key_auth`` (the verifier), kept right as the module docstring
    says.  Without a database-backed users' repository there are no keys."""
    from ..store.entities.api_keys import ApiKeyRepository

    ctx = app[CTX]
    users, tokens = getattr(ctx, "users", None), getattr(ctx, "tokens", None)
    db = getattr(users, "db", None)
    if tokens is None or db is None or not hasattr(users, "follow_revocations"):
        yield
        return
    cluster = getattr(ctx.settings, "cluster", None)
    poll_s = getattr(cluster, "poll_interval_s", 5.0)
    ctx.api_keys = keys = ApiKeyRepository(db)
    ctx.api_key_auth = auth = ApiKeyAuth(keys, users, recheck_s=poll_s, cache_size=tokens.settings.cache_size)
    keys.add_change_listener(auth.key_changed)
    keys.add_create_listener(auth.key_created)
    tokens.on_revoked(auth.user_revoked)
    task = asyncio.ensure_future(keys.follow_changes(auth.key_changed, auth.clear))
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        tokens.remove_revocation_listener(auth.user_revoked)
        keys.remove_create_listener(auth.key_created)
        keys.remove_change_listener(auth.key_changed)


def setup(app: web.Application, ctx: Any) -> None:
    from .openapi import Answer, operation

    app.cleanup_ctx.append(_keep_revocations)
    app.cleanup_ctx.append(_keep_api_keys)

    r = app.router
    operation(app, r.add_post("/api/auth/login", login), tag="auth", body=LoginRequest, response=JwtPair,
              summary="Log in; returns an access and a refresh token",
              statuses={401: Answer("Wrong credentials, a locked or inactive account (errorCode 10)", ErrorBody),
                        429: Answer("Too many logins at once (errorCode 33); try again after Retry-After",
                                    ErrorBody)})
    operation(app, r.add_post("/api/auth/token", refresh), tag="auth", body=RefreshTokenRequest,
              response=JwtPair, summary="Exchange a refresh token for a new pair",
              statuses={401: Answer("No, a bad or an expired refresh token; a disabled or deleted user "
                                    "(errorCode 10 or 11)", ErrorBody)})
    operation(app, r.add_get("/api/auth/user", current_user), tag="auth", response=dict,
              summary="The current user")
    operation(app, r.add_post("/api/auth/logout", logout), tag="auth", summary="Log out (the client drops its token)")
