"""blog_api: a blog's JSON API in one module, on Litestar and hand-written SQL over SQLite.

Read top to bottom, one section per concern:

    Configuration             the Config dataclass, from CLI flags and BLOG_API_* variables
    Types of the API          msgspec Structs for bodies and answers, and their rules
    SQL                       every statement, as named constants
    Listing                   filters, order, pages and signed cursors of GET /api/posts
    The database              one writer connection and a pool of readers (aiosqlite); the
                              lock file through which --workers' writers take turns
    Logs and request IDs      access lines, JSON logs, X-Request-ID
    Security                  bearer token, private drafts, safe defaults
    HTTP caching              ETags, 304, conditional writes (412), Idempotency-Key, and
                              compression by Accept-Encoding (coded ETags, Vary)
    Route handlers            posts, comments, tags, health
    The app factory           create_app(config)
    Commands on the database  python blog_api.py seed | import | backup | restore
    main()                    python blog_api.py [serve]: uvicorn with one send per response,
                              bounded request heads, bodies, pipelines and unread answers, the
                              refusals HTTP/1.1 asks for, in our shape (BlogHttpProtocol),
                              --workers (TcpServerConfig), and a second Ctrl-C that still
                              closes the app (ServerClosingAtForcedExit)

    python blog_api.py                   # serve on http://127.0.0.1:8000
    uvicorn blog_api:app                 # the same app, configured from BLOG_API_* variables
    app = create_app(Config(db_path=":memory:"))   # embed one in a demo or a test
"""

import argparse
import asyncio
import base64
import codecs
import difflib
import email.utils
import errno
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import os
import random
import re
import signal
import socket
import sqlite3
import sys
import time
import unicodedata
import uuid
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Hashable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import AbstractContextManager, asynccontextmanager, closing, contextmanager, nullcontext, suppress
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import lru_cache, partial
from http import HTTPStatus
from importlib.metadata import version as package_version
from io import BytesIO
from pathlib import Path
from typing import Annotated, Any, ClassVar, Generic, Literal, NoReturn, TextIO, TypeVar, get_args, get_origin
from urllib.parse import quote, quote_from_bytes, urlencode
from wsgiref.handlers import format_date_time

import aiosqlite
import httptools
import msgspec
import uvicorn
from litestar import Controller, Litestar, Request, Response, Router, delete, get, patch, post, put
from litestar.config.compression import CompressionConfig
from litestar.config.cors import CORSConfig
from litestar.connection import ASGIConnection
from litestar.constants import DEFAULT_ALLOWED_CORS_HEADERS, OPENAPI_JSON_HANDLER_NAME
from litestar.datastructures import Headers, MutableScopeHeaders, ResponseHeader, State
from litestar.di import NamedDependency, Provide
from litestar.dto import MsgspecDTO
from litestar.enums import MediaType
from litestar.exceptions import (
    ClientException,
    HTTPException,
    InternalServerException,
    MethodNotAllowedException,
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
    ServiceUnavailableException,
    TooManyRequestsException,
    ValidationException,
)
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.exceptions.responses import create_exception_response
from litestar.logging import LoggingConfig
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from litestar.middleware.base import DefineMiddleware
from litestar.middleware.compression import CompressionMiddleware
from litestar.middleware.compression.gzip_facade import GzipCompression
from litestar.middleware.rate_limit import RateLimitConfig
from litestar.openapi import OpenAPIConfig
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.plugins import (
    RapidocRenderPlugin,
    RedocRenderPlugin,
    ScalarRenderPlugin,
    StoplightRenderPlugin,
    SwaggerRenderPlugin,
    YamlRenderPlugin,
)
from litestar.openapi.spec import Components, Reference, Schema, SecurityScheme, Server
from litestar.params import HeaderParameter, JSONBody, KwargDefinition, PathParameter, QueryParameter
from litestar.response.base import ASGIResponse
from litestar.status_codes import HTTP_200_OK, HTTP_204_NO_CONTENT, HTTP_304_NOT_MODIFIED
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from litestar.typing import FieldDefinition
from litestar.utils import normalize_path
from msgspec import UNSET, Meta, UnsetType
from uvicorn.config import STARTUP_FAILURE
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.supervisors import Multiprocess

try:
    import fcntl
except ImportError:  # Windows: there, --workers' writers wait in SQLite's busy handler
    fcntl = None  # type: ignore[assignment]

__version__ = "1.0.0"

# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------

SCHEMA_PATH = Path(__file__).with_name("schema.sql")
SCHEMA_VERSION = 7
"""The ``PRAGMA user_version`` that schema.sql sets; a database at any other version is
upgraded or refused."""
SCHEMA_UPGRADES = {
    # 1 to 2: posts_fts is indexed once per write transaction (posts_fts_pending), not by a
    # trigger per post. The old triggers kept it current, so nothing is left to index.
    1: [
        "DROP TRIGGER IF EXISTS posts_fts_after_insert",
        "DROP TRIGGER IF EXISTS posts_fts_after_delete",
        "DROP TRIGGER IF EXISTS posts_fts_after_update",
    ],
    # 2 to 3: posts.comments_changed_at, so that a comment moves its post's Last-Modified.
    # When comments changed before is not known: as of now, so no copy is wrongly current.
    # The column comes after content here, which costs nothing: it is only read with it.
    2: [
        "ALTER TABLE posts ADD COLUMN comments_changed_at INTEGER NOT NULL DEFAULT 0",
        "UPDATE posts SET comments_changed_at = CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)",
        "DROP TRIGGER IF EXISTS comments_bump_post_version_after_insert",
        "DROP TRIGGER IF EXISTS comments_bump_post_version_after_delete",
    ],
    # 3 to 4: tags.post_count and tags.published_post_count, and posts.comment_count,
    # counted once here, then kept by triggers, so that GET /api/tags no longer reads every
    # tagged post, nor a post's GET all its comments. The comments' triggers are made anew.
    3: [
        "ALTER TABLE tags ADD COLUMN post_count INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE tags ADD COLUMN published_post_count INTEGER NOT NULL DEFAULT 0",
        """
        UPDATE tags
        SET (post_count, published_post_count) = (
            SELECT count(*), coalesce(sum(posts.published), 0)
            FROM post_tags JOIN posts ON posts.pk = post_tags.post_pk
            WHERE post_tags.tag_pk = tags.pk
        )
        """,
        "ALTER TABLE posts ADD COLUMN comment_count INTEGER NOT NULL DEFAULT 0",
        "UPDATE posts SET comment_count = (SELECT count(*) FROM comments WHERE comments.post_pk = posts.pk)",
        "DROP TRIGGER IF EXISTS comments_bump_post_version_after_insert",
        "DROP TRIGGER IF EXISTS comments_bump_post_version_after_delete",
    ],
    # 4 to 5: posts.title_key, what ?sort=title orders by, in place of the title in SQLite's
    # NOCASE (which folds A to Z alone). The indexes are made anew on it; the keys are made
    # by blog_api as it starts, as for a post another program wrote (make_title_keys).
    4: [
        "ALTER TABLE posts ADD COLUMN title_key TEXT NOT NULL DEFAULT ''",
        "DROP INDEX IF EXISTS posts_by_title",
        "DROP INDEX IF EXISTS posts_by_published_title",
    ],
    # 5 to 6: the index of drafts (posts_drafts), which schema.sql makes.
    5: [],
    # 6 to 7: posts_fts merges its b-trees 16 at a time, not 4, which schema.sql sets.
    6: [],
}
"""What takes a database from each version to the next, before schema.sql is applied."""

MIN_SQLITE_VERSION = (3, 37, 0)  # STRICT tables; RETURNING needs 3.35
MAX_BODY_BYTES = 1024 * 1024
MAX_COMMENT_BODY_BYTES = 128 * 1024
"""A comment's request body at most. Anyone may comment, and a client holds as much memory
as it sends of a body before finishing it: 100 bodies held open, 100 MB under the 1 MiB of
other writes, 13 MB under this. A comment's most (100 and 10,000 characters) fits in it
however it is written: 121,200 bytes as JSON escapes of astral characters (12 bytes each)."""
GRACEFUL_SHUTDOWN_SECONDS = 3  # that a shutdown waits for requests in flight, beyond the busy timeout
MAX_GRACEFUL_SHUTDOWN_SECONDS = 30  # however long the busy timeout: Kubernetes kills a pod after 30 s
MAX_REQUEST_HEAD_BYTES = 64 * 1024  # a request's line and headers: nginx takes 32 KiB, Node.js 16 KiB
REQUEST_HEAD_SECONDS = 20  # for them to arrive: nginx waits 60 s, Node.js 60 s, Apache 20 to 40 s
REQUEST_BODY_PAUSE_SECONDS = 20  # the longest a body may stop arriving: nginx's client_body_timeout is 60 s
RESPONSE_READ_PAUSE_SECONDS = 20  # the longest a client may read none of its answer: nginx's send_timeout is 60 s
LINGERING_CLOSE_SECONDS = 1.0  # reading and dropping what a client still sends, its connection closing: nginx's 5 s
BODY_CUT_BEFORE_SHUTDOWN_ENDS_SECONDS = LINGERING_CLOSE_SECONDS + 0.5  # then a body still coming gets a 503
UNREAD_CUT_BEFORE_SHUTDOWN_ENDS_SECONDS = 0.5  # then an answer the client has not read is cut off
FORCED_EXIT_SECONDS = 1.0  # that a second Ctrl-C leaves requests inside the app to end, before it closes it
MAX_PIPELINED_REQUESTS = 16  # parsed and waiting for the one being answered, on one connection
PIPELINE_SLICE_BYTES = 4096  # what is parsed at a time, so that no read queues more than that holds
FRAMING_FIELDS = (b"content-length", b"transfer-encoding")  # where a request's body ends (RFC 9112 6)
HEAD_TOO_LARGE = f"a request's line and headers may take {MAX_REQUEST_HEAD_BYTES // 1024} KiB"
ENV_PREFIX = "BLOG_API_"
TOKEN_FILE_VARIABLE = "BLOG_API_TOKEN_FILE"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
LOG_FORMATS = ("text", "json")
SYNCHRONOUS_MODES = ("full", "normal", "off")
MAX_READERS = 64  # each is a thread and a connection; with one GIL, more than a few buy nothing
MAX_BUSY_TIMEOUT_MS = 2**31 - 1
"""SQLite's busy timeout is a C int: ``PRAGMA busy_timeout`` with more is 0, no waiting at all."""
UNPRINTABLE_PATH = "path must be printable text in UTF-8, without control characters"
BEARER_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")  # RFC 6750 2.1's b64token: what a client can send
MIN_TOKEN_LENGTH = 16  # 96 bits as base64; the README's token (24 random bytes) has 32 characters
CONFIG_VALUE_TYPES: dict[Any, tuple[type | tuple[type, ...], str]] = {
    int: (int, "a whole number"),
    bool: (bool, "True or False"),
    str: (str, "text"),
    str | None: ((str, type(None)), "text or None"),
    tuple[str, ...]: (tuple, "a tuple (or a list) of text"),
}
"""What each type of ``Config`` field takes, and how a refusal words it."""


@dataclass(frozen=True)
class Config:
    """Everything that can be configured, from CLI flags or ``BLOG_API_*`` variables."""

    db_path: str | os.PathLike[str] = "blog.db"
    """A file's path, as text or a ``pathlib.Path`` (kept as text), or ``:memory:``."""
    host: str = "127.0.0.1"
    port: int = 8000
    reload: bool = False
    log_level: str = "info"
    readers: int = 4
    busy_timeout_ms: int = 5000
    token: str | None = field(default=None, repr=False)
    """With a token, writes need ``Authorization: Bearer <token>`` and drafts are private."""
    allow_anonymous_writes: bool = False
    """Without a token, let anyone write even from beyond this machine."""
    rate_limit: str | None = None
    """Writes allowed per client, as ``N/second``, ``N/minute``, ``N/hour`` or ``N/day``."""
    cors_origins: tuple[str, ...] = ()
    debug: bool = False
    log_format: str = "text"
    """``text`` for people, ``json`` for log shippers: one JSON object per line."""
    echo_sql: bool = False
    read_only: bool = False
    """Serve an existing database without ever writing to it: every write answers 405."""
    workers: int = 1
    """uvicorn worker processes, all serving the same database file."""
    synchronous: str = "full"
    """SQLite's ``synchronous``: ``full`` (every acknowledged write survives power loss),
    ``normal`` (survives a crash of blog_api, not of the machine) or ``off`` (for benchmarks)."""
    root_path: str = ""
    """The path a proxy serves the API under (``/blog``), taking it off before passing each
    request on: the URLs the API answers with (``Location``, ``Link``) carry it."""

    def __post_init__(self) -> None:
        if not isinstance(self.db_path, str | os.PathLike):
            raise TypeError(f"db_path must be a file's path, as text or a pathlib.Path, got {self.db_path!r}")
        object.__setattr__(self, "db_path", os.fspath(self.db_path))  # frozen: set as dataclasses do
        if isinstance(self.cors_origins, str):
            raise ValueError(f"cors_origins is a tuple of origins, like ({self.cors_origins!r},), not one string")
        if isinstance(self.cors_origins, list):
            object.__setattr__(self, "cors_origins", tuple(self.cors_origins))
        self.check_value_types()
        if not self.db_path:
            raise ValueError("the database path must not be empty (use :memory: for a database in memory)")
        if not self.db_path.isprintable():
            raise ValueError(f"the database {UNPRINTABLE_PATH}")
        if not self.host:
            raise ValueError("the host must not be empty (127.0.0.1 for this machine, 0.0.0.0 for any)")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, got {self.port}")
        if self.log_level not in LOG_LEVELS:
            raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")
        if self.read_only and self.db_path == ":memory:":
            raise ValueError("a read-only database must be a file that exists, not :memory:")
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"log format must be text or json, got {self.log_format!r}")
        if not 1 <= self.readers <= MAX_READERS:
            raise ValueError(f"readers must be between 1 and {MAX_READERS}, got {self.readers}")
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.workers > 1 and (self.reload or self.db_path == ":memory:"):
            raise ValueError("several workers need a database file (not :memory:) and no --reload")
        if self.synchronous not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be full, normal or off, got {self.synchronous!r}")
        if self.root_path and not ROOT_PATH.fullmatch(self.root_path):
            raise ValueError(
                "a root path is the path a proxy serves the API under, like /blog: a / and a name, or several, "
                f"in the characters of a URL's path, without a / at the end; got {self.root_path!r}"
            )
        if not 0 <= self.busy_timeout_ms <= MAX_BUSY_TIMEOUT_MS:
            raise ValueError(
                f"busy timeout must be between 0 and {MAX_BUSY_TIMEOUT_MS} ms (SQLite's largest, 24 days), "
                f"got {self.busy_timeout_ms}"
            )
        if self.token is not None and len(self.token) < MIN_TOKEN_LENGTH:
            raise ValueError(
                f"the token must be {MIN_TOKEN_LENGTH} characters or more, not {len(self.token)}, to be "
                "beyond guessing: make one with head -c 24 /dev/urandom | base64"
            )
        if self.token is not None and not BEARER_TOKEN.fullmatch(self.token):
            raise ValueError(
                "the token must be letters, digits and - . _ ~ + / (then any = padding), as in "
                "an Authorization: Bearer header (RFC 6750); no spaces, nothing else"
            )
        if self.rate_limit is not None and not RATE_LIMIT.match(self.rate_limit):
            raise ValueError(f"rate limit must look like 30/minute (or /second, /hour, /day), got {self.rate_limit!r}")
        if ANY_ORIGIN in self.cors_origins and self.token is None:
            raise ValueError(
                "--cors-origin * needs --token: without one, a page on any site a user visits "
                "could read the drafts, and write"
            )
        for origin in self.cors_origins:
            if origin == ANY_ORIGIN:
                continue
            port = (match := ORIGIN.fullmatch(origin)) and match.group("port")
            if not match or port == DEFAULT_PORTS[match.group("scheme")] or (port and int(port) > 65535):
                raise ValueError(
                    "a CORS origin is a scheme and host as a browser sends them in Origin: lowercase, no path, no "
                    f"default port (an international name in its xn-- form), like https://blog.example; got {origin!r}"
                )

    def check_value_types(self) -> None:
        """Refuse a value of another type than its field's, as code that makes a ``Config``
        may pass one read from the environment: ``readers="4"`` failed on a comparison of
        int and str, and ``debug="no"``, being true, showed tracebacks to every client."""
        for name, field_ in self.__dataclass_fields__.items():
            if field_.type not in CONFIG_VALUE_TYPES:
                continue
            value = getattr(self, name)
            types, wanted = CONFIG_VALUE_TYPES[field_.type]
            is_bool_as_number = isinstance(value, bool) and field_.type is int
            is_tuple_of_other = field_.type == tuple[str, ...] and not all(isinstance(item, str) for item in value)
            if not isinstance(value, types) or is_bool_as_number or is_tuple_of_other:
                shown = repr(value) if field_.repr else type(value).__name__  # a token is never echoed
                raise TypeError(f"{name} must be {wanted}, got {shown}")

    @property
    def graceful_shutdown_seconds(self) -> float:
        """How long a shutdown waits for requests in flight before uvicorn cancels them. A write
        may wait the busy timeout for its lock: cancelled then, it was answered a 500 while its
        write went on to be committed. But a client sending a body slowly may hold the shutdown
        that long too: at most ``MAX_GRACEFUL_SHUTDOWN_SECONDS``."""
        return min(self.busy_timeout_ms / 1000 + GRACEFUL_SHUTDOWN_SECONDS, MAX_GRACEFUL_SHUTDOWN_SECONDS)

    @property
    def writes_per(self) -> tuple[Literal["second", "minute", "hour", "day"], int] | None:
        """The rate limit as Litestar's RateLimitConfig takes it: (unit, requests)."""
        if self.rate_limit is None:
            return None
        count, unit = self.rate_limit.split("/")
        return unit, int(count)  # type: ignore[return-value]

    @property
    def writers_take_turns(self) -> bool:
        """Several worker processes write to one database: their writers take turns through
        a ``WriteLock``."""
        return self.workers > 1

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "Config":
        """Read ``BLOG_API_DB``, ``BLOG_API_PORT``, ...; unset variables keep the defaults.
        ``BLOG_API_TOKEN_FILE`` names a file holding the token."""
        values: dict[str, Any] = {}
        for name, field_ in cls.__dataclass_fields__.items():
            variable = env_variable(name)
            if variable not in environ:
                continue
            raw = environ[variable].strip()
            if field_.type is bool:
                if raw.lower() not in ("1", "true", "yes", "0", "false", "no", ""):
                    raise ValueError(f"{variable} must be true or false, got {raw!r}")
                values[name] = raw.lower() in ("1", "true", "yes")
            elif field_.type is int:
                try:
                    values[name] = int(raw)
                except ValueError:
                    raise ValueError(f"{variable} must be a whole number, got {raw!r}") from None
            elif field_.type == tuple[str, ...]:
                values[name] = tuple(item for item in re.split(r"[,\s]+", raw) if item)
            else:
                values[name] = raw.lower() if name in ("log_level", "synchronous") else raw
        if "token" not in values and environ.get(TOKEN_FILE_VARIABLE):
            values["token"] = read_token_file(environ[TOKEN_FILE_VARIABLE])
        return cls(**values)

    @classmethod
    def unknown_env_variables(cls, environ: Mapping[str, str] = os.environ) -> list[str]:
        """What to say of each ``BLOG_API_*`` variable that sets nothing: a misspelt name
        (``BLOG_API_CORS_ORIGIN``, after ``--cors-origin``) would otherwise go unnoticed."""
        known = [env_variable(name) for name in cls.__dataclass_fields__] + [TOKEN_FILE_VARIABLE]
        unprefixed = [name.removeprefix(ENV_PREFIX) for name in known]  # compared without what all share
        warnings = []
        for variable in sorted(name for name in environ if name.startswith(ENV_PREFIX) and name not in known):
            warning = f"{variable} is not a setting of blog_api, and is ignored"
            if close := difflib.get_close_matches(variable.removeprefix(ENV_PREFIX), unprefixed, n=1):
                warning += f"; did you mean {ENV_PREFIX}{close[0]}?"
            warnings.append(warning)
        return warnings

    def to_env(self) -> dict[str, str]:
        """The variables that make ``Config.from_env()`` return this config (for --reload)."""
        variables = {}
        for name, value in vars(self).items():
            if value is not None:
                variables[env_variable(name)] = ",".join(value) if isinstance(value, tuple) else str(value)
        return variables


RATE_LIMIT = re.compile(r"^[1-9][0-9]*/(second|minute|hour|day)$")
ROOT_PATH = re.compile(r"(?:/[A-Za-z0-9._~!$&'()*+,;=:@-]+)+")  # RFC 3986's path segments, not percent-encoded
RATE_LIMIT_STORE = RateLimitConfig.store  # the name of the store Litestar keeps its counts in
RATE_LIMIT_SWEEP_SECONDS = 60
ORIGIN = re.compile(r"(?P<scheme>https?)://(?:[a-z0-9.-]+|\[[0-9a-f:.]+\])(?::(?P<port>[1-9][0-9]{0,4}))?")
"""An origin as browsers serialise it in Origin; another form (Blog.example, :443, :0800) never matches."""
ANY_ORIGIN = "*"
"""``--cors-origin *``: browser code on any site may call the API (with the token to write)."""
DEFAULT_PORTS = {"http": "80", "https": "443"}


def read_token_file(path: str) -> str:
    """The token in a file, so that it need not appear in ``ps``: its text, trimmed, without
    the byte order mark a Windows editor may write first (it was refused as a character no
    token may hold)."""
    try:
        return Path(path).read_text(encoding="utf-8-sig").strip()
    except OSError as exc:
        raise ValueError(f"cannot read the token file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"cannot read the token file {path}: it is not UTF-8 text") from None


def env_variable(field_name: str) -> str:
    return ENV_PREFIX + ("DB" if field_name == "db_path" else field_name.upper())


# --------------------------------------------------------------------------------------
# Types of the API
# --------------------------------------------------------------------------------------

WHITESPACE = r"\t\n\v\f\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
"""What ``\\s`` matches in the regexes of JSON Schema (ECMA-262). Python's differs (it adds
U+001C to U+001F and U+0085, and leaves out U+FEFF), so patterns list these characters
instead, to mean the same to schema-driven clients as to msgspec."""
INVISIBLE = (
    r"\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2060-\u206f"
    r"\u3164\ufe00-\ufe0f\uffa0\ufff0-\ufff8"
)
"""Unicode's Default_Ignorable_Code_Point in the BMP: the characters shown as nothing (a
soft hyphen, a zero-width space, a direction mark, a variation selector, a Hangul filler),
in the same escapes as ``WHITESPACE``. A title of them alone was a post with no title to see."""
NOT_BLANK = f"[^{WHITESPACE}{INVISIBLE}]"
"""The pattern of the text a person writes (a title, a post's content, a comment's author and
body): not whitespace and invisible characters alone. ``body_error`` puts msgspec's message
for it in plain words."""


def written_text(max_length: int, example: str) -> Any:
    """The type of a string that a person writes: 1 to ``max_length`` characters, not whitespace
    and invisible characters alone."""
    description = f"1 to {max_length:,} characters, not all whitespace or invisible."
    return Annotated[
        str, Meta(min_length=1, max_length=max_length, pattern=NOT_BLANK, description=description, examples=[example])
    ]


Title = written_text(100, "My First Litestar Blog Post")
Content = written_text(100_000, "Litestar makes API development easy.")
Author = written_text(100, "Ada")
CommentBody = written_text(10_000, "Nice post!")
POST_ID_SHAPE = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
SLUG_CHARACTER = r"(?:(?!\p{Uppercase_Letter})[\p{Letter}\p{Number}]\p{Mark}*)"
SLUG_PATTERN = rf"^(?!{POST_ID_SHAPE}$){SLUG_CHARACTER}+(?:-{SLUG_CHARACTER}+)*$"
r"""Letters of any script but capitals, and digits, each with the marks that follow it (the
vowel signs of हिन्दी, the dakuten of が written apart), in words joined by single hyphens,
and not shaped like a post's ID, as the OpenAPI document says it: in ECMA-262's dialect,
which JSON Schema's ``pattern`` is read in. There ``\w`` is ASCII alone: ``[^\W_A-Z]``,
what it said before, refused ``привет``, which the server took. The categories are spelled
out in full because schemathesis reads ``\p{L}`` as Latin letters alone. Python's ``re``
has no ``\p``: ``slug_words`` reads it with ``SLUG_CATEGORIES`` and ``MARKS``."""
SLUG_CATEGORIES = frozenset({"Ll", "Lt", "Lm", "Lo", "Nd", "Nl", "No"})
"""The Unicode general categories of a slug's characters: letters and numbers, but ``Lu``."""
MARKS = frozenset({"Mn", "Mc", "Me"})
"""Unicode's marks: in a slug, only after a letter, a number or another mark."""

MAX_SLUG_LENGTH = 100
Slug = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=MAX_SLUG_LENGTH,
        description=(
            "Letters of any script but capitals, digits and single hyphens; unique. Made from the title if not given."
        ),
        examples=["my-first-litestar-blog-post"],
    ),
    KwargDefinition(pattern=SLUG_PATTERN),  # documented here, checked by checked_slug with a clearer message
]
MAX_TAGS = 10
MAX_TAG_LENGTH = 30
Tags = Annotated[
    list[
        Annotated[
            str,
            Meta(min_length=1, max_length=MAX_TAG_LENGTH),
            KwargDefinition(min_length=1, max_length=MAX_TAG_LENGTH),  # Litestar documents this one
        ]
    ],
    Meta(
        max_length=MAX_TAGS,
        description=f"Up to {MAX_TAGS} tags of 1 to {MAX_TAG_LENGTH} characters. Each is trimmed, loses control "
        "characters and is lowercased; duplicates collapse, and one left blank is dropped.",
        examples=[["python", "litestar"]],
    ),
]
Ignored = Annotated[Any, Meta(description="Read-only: set by the server, ignored if a client sends it back.")]


class FieldError(Exception):
    """A rule of a request body that a type cannot say, broken at ``key``.

    Raised from a Struct's ``__post_init__``; msgspec lets it through (it would turn a
    ValueError into a message without the field's name), and StrictJSON answers 400.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(key, message)
        self.key, self.message = key, message


class Welcome(msgspec.Struct):
    message: str


class PostCreate(msgspec.Struct, forbid_unknown_fields=True):
    """A new post. Any field not listed here is refused."""

    title: Title
    content: Content
    published: bool = True
    slug: Slug | None = None
    tags: Tags = msgspec.field(default_factory=list)
    id: Ignored = None
    created_at: Ignored = None
    updated_at: Ignored = None
    comment_count: Ignored = None
    version: Ignored = None

    def __post_init__(self) -> None:
        if self.slug is not None:
            self.slug = checked_slug(self.slug)
        self.tags = normalized_tags(self.tags)


class PostUpdate(msgspec.Struct, forbid_unknown_fields=True):
    """A partial update: only the fields sent change; ``null`` leaves a field as it is.
    ``tags``, when sent, replace the post's tags."""

    title: Title | UnsetType | None = UNSET
    content: Content | UnsetType | None = UNSET
    published: bool | UnsetType | None = UNSET
    slug: Slug | UnsetType | None = UNSET
    tags: Tags | UnsetType | None = UNSET
    id: Ignored = None
    created_at: Ignored = None
    updated_at: Ignored = None
    comment_count: Ignored = None
    version: Ignored = None

    def __post_init__(self) -> None:
        if isinstance(self.slug, str):
            self.slug = checked_slug(self.slug)
        if isinstance(self.tags, list):
            self.tags = normalized_tags(self.tags)


ASCII_SLUG_WORD = re.compile(r"[a-z0-9]+")
UUID_SHAPE = re.compile(rf"^{POST_ID_SHAPE}$")


def composed(text: str) -> str:
    """``text`` in Unicode's composed form (NFC), in which tags, slugs, the paths that name
    them and searches are compared: café typed as cafe and a combining U+0301 is café."""
    return text if text.isascii() else unicodedata.normalize("NFC", text)


def normalized_tag(tag: str) -> str:
    """A tag as stored: no control or invisible characters, trimmed, inner spaces collapsed,
    lowercase, composed (NFC: café typed as cafe and U+0301 is café). The invisible ones
    (Unicode's format characters: a soft hyphen, a zero-width space, a direction mark) made
    a second tag that looked the same; but the joiners are kept (``TAG_JOINERS``)."""
    if not tag.isprintable():  # else it holds neither (Cc, Cf): the usual case, at C speed
        tag = "".join(c for c in tag if c.isspace() or c in TAG_JOINERS or unicodedata.category(c) not in ("Cc", "Cf"))
    return composed(" ".join(tag.split()).lower())


TAG_JOINERS = frozenset("\u200c\u200d")
"""The zero-width non-joiner and joiner: invisible, but they make an emoji (👩 + ZWJ + 💻 is
one) or a word in Persian what it is."""


def normalized_tags(tags: list[str]) -> list[str]:
    """The Tags type has checked the list (at most 10 tags of 1 to 30 characters as sent);
    one left blank is dropped. Normalising mostly shortens a tag, but may lengthen one: İ
    lowercased is i and a combining dot, and a few characters compose to two (U+FB1D, יִ);
    past 30 characters so, it was a 500 (the table's CHECK)."""
    names = [name for name in dict.fromkeys(normalized_tag(tag) for tag in tags) if name]
    for name in names:
        if len(name) > MAX_TAG_LENGTH:
            raise FieldError(
                "tags",
                f"Expected tags of at most {MAX_TAG_LENGTH} characters once lowercased and composed (NFC), "
                f"as they are stored: {name!r} has {len(name)}",
            )
    return names


def slug_words(text: str) -> list[str]:
    """The runs of slug characters (``SLUG_CATEGORIES``, and ``MARKS`` after one) in
    ``text``; invisible ones (Unicode's format characters: a soft hyphen, a zero-width
    joiner, a direction mark) are dropped, as WordPress drops them; every other character
    separates them."""
    if text.isascii():
        return ASCII_SLUG_WORD.findall(text)
    kept, in_word = [], False
    for char in text:
        category = unicodedata.category(char)
        if category == "Cf":
            continue
        in_word = category in SLUG_CATEGORIES or (in_word and category in MARKS)
        kept.append(char if in_word else " ")
    return "".join(kept).split()


def checked_slug(slug: str) -> str:
    """A slug a client sent, composed (NFC) as slugs are stored, once its rules are checked.
    Composing may lengthen it (U+FB1D, יִ, is two characters composed): past 100 characters,
    it could not be sent back, and past 120 it was a 500 (the table's CHECK)."""
    slug = composed(slug)
    if len(slug) > MAX_SLUG_LENGTH:
        raise FieldError(
            "slug",
            f"Expected at most {MAX_SLUG_LENGTH} characters once composed (NFC), as slugs are stored: "
            f"this one has {len(slug)}",
        )
    if UUID_SHAPE.match(slug):
        raise FieldError("slug", "Expected a slug that does not look like a post ID")
    if slug_words(slug) != slug.split("-"):  # a word of something else, or a hyphen too many
        raise FieldError("slug", "Expected letters (no capitals), digits and single hyphens, like my-first-post")
    return slug


# Letters that Unicode does not decompose into a base letter and an accent.
TRANSLITERATIONS = str.maketrans(
    {"ß": "ss", "ẞ": "ss", "æ": "ae", "Æ": "ae", "œ": "oe", "Œ": "oe", "ø": "o", "Ø": "o", "đ": "d", "Đ": "d", "ł": "l",
     "Ł": "l", "þ": "th", "Þ": "th", "ð": "d", "Ð": "d", "ı": "i"}  # noqa: RUF001 (Turkish dotless i)
)  # fmt: skip


def slugify(title: str) -> str:
    """A slug made from a title: Latin letters lose their accents (Café → cafe), letters of
    other scripts stay as they are, marks included (Йод → йод, が → が, हिन्दी → हिन्दी),
    lowercase; invisible characters are dropped, and every other character separates words."""
    slug = "-".join(slug_words(plain_latin(title).lower()))[:MAX_SLUG_LENGTH].strip("-")
    if not slug or UUID_SHAPE.match(slug):
        return f"post-{slug}".strip("-")
    return slug


def title_sort_key(title: str) -> str:
    """What ``?sort=title`` orders a title by: casefolded, Latin letters without their
    accents and ligatures (Émile as emile, Straße as strasse), so that Émile sorts between
    eclair and zebra; letters of other scripts keep their marks (й is not и). SQLite's
    NOCASE, which this replaces, folds A to Z alone."""
    return plain_latin(title).casefold()


def plain_latin(text: str) -> str:
    """``text`` with its Latin letters plain: letters Unicode does not decompose spelled out
    (``TRANSLITERATIONS``: ß → ss), compatibility forms apart (ﬁ → fi, full-width letters →
    ASCII), and the marks that follow a Latin letter dropped (Café → Cafe); composed (NFC).
    Other scripts keep their marks: й is not и, nor が か, and हिन्दी's vowel signs are the word."""
    if text.isascii():  # nothing to transliterate or decompose
        return text
    kept, base = [], "\0"  # a mark that begins the text follows no letter (and no name: "" raised)
    for char in unicodedata.normalize("NFKD", text.translate(TRANSLITERATIONS)):
        if unicodedata.category(char) not in MARKS:
            base = char
        elif unicodedata.name(base, "").startswith("LATIN "):
            continue
        kept.append(char)
    return unicodedata.normalize("NFC", "".join(kept))


TIMESTAMP_FORMAT = "UTC, RFC 3339, always with six fractional digits, so that text order is time order."


class Post(msgspec.Struct):
    """A post as the API returns it, in the tutorial's field order."""

    id: Annotated[str, Meta(description="UUID4, made by the server.")]
    title: str
    content: str
    created_at: Annotated[str, KwargDefinition(format="date-time", description=TIMESTAMP_FORMAT)]
    updated_at: Annotated[
        str, KwargDefinition(format="date-time", description=f"{TIMESTAMP_FORMAT} Strictly increases on every change.")
    ]
    published: bool
    slug: str
    tags: list[str]
    comment_count: int
    version: Annotated[int, Meta(description="Bumped by every change; the ETag is made from id and version.")]


class CommentCreate(msgspec.Struct, forbid_unknown_fields=True):
    """A new comment. Any field not listed here is refused."""

    author: Author
    body: CommentBody
    id: Ignored = None
    post_id: Ignored = None
    created_at: Ignored = None


class Comment(msgspec.Struct):
    id: Annotated[str, Meta(description="UUID4, made by the server.")]
    post_id: str
    author: str
    body: str
    created_at: Annotated[str, KwargDefinition(format="date-time", description=TIMESTAMP_FORMAT)]


class TagCount(msgspec.Struct):
    name: str
    post_count: int


PostId = Annotated[str, PathParameter(description="The post's ID, as returned when it was created.")]
PostIdOrSlug = Annotated[str, PathParameter(description="The post's ID, or its slug.")]
CommentId = Annotated[str, PathParameter(description="The comment's ID, as returned when it was created.")]
IfNoneMatch = Annotated[
    str | None, HeaderParameter(name="If-None-Match", description="ETags the client has: 304 if one is current.")
]
IfNoneMatchForWrites = Annotated[
    str | None,
    HeaderParameter(
        name="If-None-Match",
        description="Change only if the post is at none of these ETags, else 412; `*`: only if there is "
        "no such post, which a write here never allows (412, or 404).",
    ),
]
IfModifiedSince = Annotated[
    str | None,
    HeaderParameter(
        name="If-Modified-Since", description="An HTTP date: 304 if unchanged since (without If-None-Match)."
    ),
]
IfMatch = Annotated[
    str | None,
    HeaderParameter(name="If-Match", description="Only if its current ETag is one of these (or `*`); else 412."),
]
IfUnmodifiedSince = Annotated[
    str | None,
    HeaderParameter(
        name="If-Unmodified-Since",
        description="An HTTP date: only if the post has not changed since; else 412 (without If-Match).",
    ),
]
IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(
        name="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="Makes a retry safe: the same key and body within 24 hours gets the first answer again, "
        "without a second write; the same key with another body is a 422.",
    ),
]
# A plain array (no "or null"): a query string cannot say null, and schema-driven tools
# should not be asked to believe it can.
TagFilter = Annotated[
    list[str],
    QueryParameter(
        description=f"Only posts with this tag; repeat it for posts with all of them (up to {MAX_TAGS}). "
        "A blank one is a 400."
    ),
]
PublishedFilter = Annotated[
    bool | None,
    QueryParameter(description="`true`: only published posts; `false`: only drafts; absent: all."),
]
PageSize = Annotated[int, QueryParameter(ge=1, le=100, description="How many per page, 1 to 100.")]
PageOffset = Annotated[
    int,
    QueryParameter(ge=0, le=1_000_000_000, description="How many to skip before the page. Not with `cursor`."),
]
PageCursorToken = Annotated[
    str | None,
    QueryParameter(
        min_length=1,
        max_length=1000,
        description="An opaque token from the `Link` header; it carries the position in the list.",
    ),
]
SortField = Annotated[
    Literal["created_at", "updated_at", "title"] | None,
    QueryParameter(description="What to order by, ties broken by id. Default: `created_at`; with `q`, relevance."),
]
SortOrder = Annotated[
    Literal["asc", "desc"] | None,
    QueryParameter(description="`desc` (the default: newest, last or most relevant first) or `asc`."),
]
CommentOrder = Annotated[
    Literal["asc", "desc"] | None,
    QueryParameter(description="`asc` (the default: oldest first) or `desc` (newest first)."),
]
# Strings parsed by listing_from_query: Litestar's lax conversion would take 1700000000 for a date.
CreatedAfter = Annotated[
    str | None,
    QueryParameter(format="date-time", description="Only posts created after this moment (RFC 3339, with an offset)."),
]
CreatedBefore = Annotated[
    str | None,
    QueryParameter(format="date-time", description="Only posts created before this moment (RFC 3339, with an offset)."),
]
SearchText = Annotated[
    str | None,
    QueryParameter(
        min_length=1,
        max_length=200,
        description="Words to find in title or content, all of them; `lite*` matches a prefix "
        '(of 2 characters or more), `"exact phrase"` words in a row, and `-word` or `-"a phrase"` leaves out '
        "the posts that have it. Results rank by relevance (bm25, title above content) unless `sort` is given.",
    ),
]


class PreconditionFailed(ClientException):
    """412: If-Match named an ETag that is no longer current, or the post changed after the
    date of If-Unmodified-Since; a write changed nothing, a GET (of a post, a comment or a
    list) answers nothing else."""

    status_code = 412
    detail = "The post has changed since that ETag; fetch it again"


STALE_DATE = "The post has changed since the date of If-Unmodified-Since; fetch it again"
NOT_THE_COMMENTS_ETAG = "If-Match names no ETag of this comment: its ETag is its ID in quotes, and never changes"
UNWANTED_COMMENT_ETAG = "The comment is at an ETag that If-None-Match names (or * for any); nothing was deleted"
NOT_ITS_ETAG = (
    "If-Match names no ETag of this post: send the value of its ETag header, quotes included (a W/ one never matches)"
)
UNWANTED_ETAG = "The post is at an ETag that If-None-Match names (or * for any); nothing was changed"
NOT_YET_AT_VERSION = (
    "If-Match names a later version of this post than the one it is at ({version}), as when the database was "
    "restored from an older copy; fetch it again"
)
NOT_THE_LISTS_ETAG = (
    "If-Match names no ETag of this list: it has changed since, or that is not its ETag (send the value "
    "of its ETag header, quotes included; a W/ one never matches)"
)


class DatabaseUnavailable(ServiceUnavailableException):
    """503, as ``database_unavailable`` answers it (this class names it in the OpenAPI document)."""

    detail = (
        "The database cannot serve now: busy past the busy timeout (retry after Retry-After), its disk full "
        "or failing, or its file moved while the server ran (it must restart)"
    )


class ListChanged(PreconditionFailed):
    """412 for a list (a page of posts or of comments, the tags): If-Match names another version of it."""

    detail = NOT_THE_LISTS_ETAG


class CommentPreconditionFailed(PreconditionFailed):
    """412 for a comment: If-Match does not name its ETag, or If-None-Match does."""

    detail = "If-Match does not name the comment's ETag (its ID in quotes, which never changes), or If-None-Match does"


class IdempotencyKeyReused(ClientException):
    """422: an Idempotency-Key already used for a request with another body."""

    status_code = 422
    detail = "This Idempotency-Key was used for another request body"


class SlugTaken(ClientException):
    """409: the slug a client chose belongs to another post."""

    status_code = 409
    detail = "The slug is already used by another post"


class BodyTooLarge(ClientException):
    """413 (RFC 9110 15.5.14, Content Too Large): a body over its route's limit, which Litestar
    refuses as ``Request Entity Too Large``, not saying how large a body may be."""

    status_code = 413


BODY_TOO_LARGE = {
    MAX_BODY_BYTES: "The body is over 1 MiB, the most a request may send",
    MAX_COMMENT_BODY_BYTES: "The body is over 128 KiB, the most a comment may send",
}
"""What a body over each limit is told."""


class UnsupportedContentEncoding(ClientException):
    """415 (RFC 9110 15.5.16): a body in a content coding (``Content-Encoding: gzip``), which
    blog_api does not decode; ``Accept-Encoding`` says what it takes (12.5.3)."""

    status_code = 415
    detail = "The body has a Content-Encoding (gzip, br, ...); send it as plain JSON, without one"


class UnsupportedPatchFormat(ClientException):
    """415 (RFC 5789 2.2): a JSON Patch (RFC 6902), a list of operations, which an update here
    is not: it is a JSON object of the fields to change, as ``Accept-Patch`` says (3.1)."""

    status_code = 415
    detail = (
        "JSON Patch (application/json-patch+json) is not taken here: send the fields to change as a JSON object, "
        'like {"title": "New title"}'
    )


JSON_PATCH = "application/json-patch+json"
ACCEPT_PATCH = "application/json"
"""What a PATCH here takes: a JSON object of the fields to change. Not JSON Merge Patch
(RFC 7396), whose ``null`` removes a field: here it leaves the field as it is."""

BODY_ERRORS = [BodyTooLarge, UnsupportedContentEncoding, UnsupportedPatchFormat]
"""What any request with a JSON body can answer besides 400: too large, compressed, or a
JSON Patch."""


class ClientClosedRequest(ClientException):
    """499 (nginx's code): the client went away before its body was all sent. Litestar reports
    that as a 500; it is no error of the server's, and the answer reaches no one, but the
    access line says what happened."""

    status_code = 499
    detail = "Client Closed Request"


StructT = TypeVar("StructT", bound=msgspec.Struct)


class StrictJSON(MsgspecDTO[StructT], Generic[StructT]):
    """Decodes a request body straight into its Struct with msgspec's strict rules.

    Litestar converts request data in lax mode, which would take ``"published": 1`` or
    ``"published": "true"`` for ``true``. Here JSON types must match exactly. Errors keep
    Litestar's 400 shape, with the offending field as ``key``; the OpenAPI schema is the
    Struct's own.
    """

    def decode_bytes(self, value: bytes) -> StructT:
        try:
            return msgspec.json.decode(value, type=self.model_type)
        except FieldError as exc:
            raise validation_failed(self.asgi_connection, {"message": exc.message, "key": exc.key}) from None
        except msgspec.ValidationError as exc:
            raise validation_failed(self.asgi_connection, body_error(str(exc))) from None
        except msgspec.DecodeError as exc:
            content_type = self.asgi_connection.headers.get("content-type", "")
            raise validation_failed(self.asgi_connection, {"message": json_error(value, exc, content_type)}) from None
        except RecursionError:  # arrays or objects nested 1,000 deep (10,000 on Python 3.13), in any field
            raise validation_failed(self.asgi_connection, {"message": TOO_DEEP}) from None
        except UnicodeDecodeError:  # msgspec's error for a string that is not UTF-8
            raise validation_failed(self.asgi_connection, {"message": not_utf8(value)}) from None

    @classmethod
    def create_openapi_schema(
        cls, field_definition: FieldDefinition, handler_id: str, schema_creator: Any
    ) -> Reference | Schema:
        reference = schema_creator.for_field_definition(FieldDefinition.from_annotation(cls.model_type))
        # The Structs refuse unknown fields (forbid_unknown_fields); the schema says so too.
        schema_creator.schema_registry.from_reference(reference).schema.additional_properties = False
        return reference


def json_body(
    model: type[msgspec.Struct], may_write: Callable[[Request], Awaitable[None]], max_bytes: int = MAX_BODY_BYTES
) -> dict[str, Any]:
    """The route options for a write whose ``data`` is a JSON object of ``model``, at most
    ``max_bytes`` long: first ``may_write`` (who may write here), then the body must not be
    empty. (Litestar takes one ``before_request`` hook per route.)"""

    async def check_writer_then_body(request: Request) -> None:
        await may_write(request)
        await require_json_body(request, max_bytes)

    return {
        "dto": StrictJSON[model],
        "return_dto": None,
        "before_request": check_writer_then_body,
        "request_max_body_size": max_bytes,
    }


async def require_json_body(request: Request, max_bytes: int) -> None:
    """Refuse a compressed body (415; it would be reported as malformed JSON), a PATCH in JSON
    Patch (415; a list, where an object is expected: other writes read any body as JSON), and
    an empty body clearly (Litestar would report it as a missing "'data'")."""
    content_encoding = request.headers.get("content-encoding")
    if content_encoding is not None and content_encoding.strip().lower() not in ("", "identity"):
        raise UnsupportedContentEncoding(headers={"Accept-Encoding": "identity"})
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if request.method == "PATCH" and media_type == JSON_PATCH:
        raise UnsupportedPatchFormat(headers={"Accept-Patch": ACCEPT_PATCH})
    try:
        body = await request.body()
    except InternalServerException as exc:  # Litestar's only one here: "client disconnected prematurely"
        raise ClientClosedRequest from exc
    except RequestEntityTooLarge:
        raise BodyTooLarge(detail=BODY_TOO_LARGE[max_bytes]) from None
    if not body.strip(JSON_WHITESPACE):  # else msgspec says "Input data was truncated"
        raise validation_failed(request, {"message": "The body is empty; expected a JSON object"})


def validation_failed(request: Request, error: dict[str, str]) -> ValidationException:
    """Litestar's own 400 for a bad body, with ``extra`` saying what is wrong and where."""
    return ValidationException(detail=validation_detail(request), extra=[{**error, "source": "body"}])


def validation_detail(request: Request) -> str:
    """The ``detail`` of Litestar's own 400s, which name the request with its query string."""
    query = request.url.query
    return f"Validation failed for {request.method} {request.url.path}{'?' if query else ''}{query}"


JSON_WHITESPACE = b" \t\r\n"  # RFC 8259 2
TOO_DEEP = "JSON is malformed: arrays or objects nested too deep"
BYTE_ORDER_MARK = "JSON is malformed: it begins with a byte order mark (BOM), which JSON text must not (RFC 8259)"
UTF16 = "JSON is malformed: it begins with a UTF-16 byte order mark; JSON text must be UTF-8 (RFC 8259)"
LONE_SURROGATE = "JSON is malformed: a \\ud800 to \\udbff escape must be followed by a \\udc00 to \\udfff one"


def json_error(body: bytes, error: msgspec.DecodeError, content_type: str) -> str:
    """msgspec's message for a body that is not JSON, except two: a byte order mark (UTF-8's,
    or UTF-16's, which tells a body in UTF-16), which it calls an invalid character, and a
    high surrogate escape that no low one follows (``"\\ud800"``), which it calls truncated
    input. Python's json module reads such a string, so a "truncated" body that it reads is
    said to be that. A body that is no JSON object at all, sent as another type (a form, by
    ``curl -F title=x``), is told so too: msgspec says only which byte is wrong."""
    if body.startswith(codecs.BOM_UTF8):
        return BYTE_ORDER_MARK
    if body.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return UTF16
    message = str(error)
    if message == "Input data was truncated":
        try:
            json.loads(body)
        except (ValueError, RecursionError):
            return message
        return LONE_SURROGATE
    media_type = content_type.partition(";")[0].strip().lower()
    sent_as_json = media_type in ("", "application/json") or media_type.endswith("+json")
    if not sent_as_json and not body.lstrip(JSON_WHITESPACE).startswith(b"{"):
        return f"{message}; the body must be a JSON object, and came as {media_type}"
    return message


def not_utf8(body: bytes) -> str:
    """Where a body stops being UTF-8, which JSON text must be. msgspec says only where in
    its string."""
    try:
        body.decode()
    except UnicodeDecodeError as exc:
        return f"JSON is malformed: not UTF-8 at byte {exc.start}; JSON text must be UTF-8"
    return "JSON is malformed: not UTF-8; JSON text must be UTF-8"


FIELD_PATH = re.compile(r"^(?P<message>.*) - at `\$\.(?P<key>\w+)")
NAMED_FIELD = re.compile(r"field `(?P<key>[^`]+)`")


PLAIN_MESSAGES = {
    f"Expected `str` matching regex {NOT_BLANK!r}": "Expected some text, not only whitespace or invisible characters"
}


def body_error(message: str) -> dict[str, str]:
    """Turn msgspec's message into ``{"message", "key"}``, naming the field it is about."""
    if match := FIELD_PATH.match(message):
        return {"message": PLAIN_MESSAGES.get(match["message"], match["message"]), "key": match["key"]}
    if match := NAMED_FIELD.search(message):
        return {"message": message, "key": match["key"]}
    return {"message": message}


# --------------------------------------------------------------------------------------
# SQL
# --------------------------------------------------------------------------------------


def iso_timestamp(column: str) -> str:
    """SQL for a stored timestamp (µs since the epoch) as the API shows it, the way
    ``format_timestamp`` does: ``2025-03-12T10:42:35.700944Z``."""
    return f"strftime('%Y-%m-%dT%H:%M:%S', {column} / 1000000, 'unixepoch') || printf('.%06dZ', {column} % 1000000)"


# A post: what the handlers need for headers (id, slug, when it last changed, published,
# version), then the post as the API shows it, as JSON made by SQLite in the order of the Post
# Struct, with its tags (in the order they were given) and how many comments it has.
# SQLite builds it in the reader's thread, which lets go of the GIL meanwhile, so the
# event loop never decodes and re-encodes a post it only passes on.
POST_FIELDS = f"""
    posts.id, posts.slug, max(posts.updated_at, posts.comments_changed_at), posts.published, posts.version,
    json_object(
        'id', posts.id,
        'title', posts.title,
        'content', posts.content,
        'created_at', {iso_timestamp("posts.created_at")},
        'updated_at', {iso_timestamp("posts.updated_at")},
        'published', json(iif(posts.published, 'true', 'false')),
        'slug', posts.slug,
        'tags', json((
            SELECT json_group_array(name)
            FROM (
                SELECT tags.name
                FROM post_tags JOIN tags ON tags.pk = post_tags.tag_pk
                WHERE post_tags.post_pk = posts.pk
                ORDER BY post_tags.position
            )
        )),
        'comment_count', posts.comment_count,
        'version', posts.version
    ) AS json
"""

# Every post whose ID or slug is among :keys (a JSON array), drafts too: the caller decides
# who may see them. An ID is never slug-shaped, so each key finds at most one post.
SELECT_POSTS_BY_KEY = f"""
SELECT {POST_FIELDS}
FROM posts
WHERE id IN (SELECT value FROM json_each(:keys))
   OR slug IN (SELECT value FROM json_each(:keys))
"""

SELECT_POST = f"""
SELECT {POST_FIELDS}
FROM posts
WHERE id = ?
"""

# The slug if no post has it, else slug-N for a number N no post has, where N - 1 is taken
# (the next number while none has been freed). Doubling: N = 2, 4, 8, ... while slug-N is
# taken; the last taken one, T, is followed by a free 2T. Halving: from T, try T + step for
# step = T/2, T/4, ... 1, keeping each that is taken; then T + 1 is free. A few lookups in the
# slug index, however many posts share the title. slug-N is the slug cut to leave room for -N
# within :max_length, its trailing hyphens dropped.
FIND_FREE_SLUG = """
WITH RECURSIVE
  doubling(number) AS (
    SELECT 1
    UNION ALL
    SELECT number * 2
    FROM doubling
    WHERE EXISTS (
      SELECT 1 FROM posts
      WHERE slug = rtrim(substr(:slug, 1, :max_length - 1 - length(number * 2)), '-') || '-' || (number * 2)
    )
  ),
  halving(taken, step) AS (
    SELECT max(number), max(number) / 2 FROM doubling
    UNION ALL
    SELECT
      iif(
        EXISTS (
          SELECT 1 FROM posts
          WHERE slug = rtrim(substr(:slug, 1, :max_length - 1 - length(taken + step)), '-') || '-' || (taken + step)
        ),
        taken + step,
        taken
      ),
      step / 2
    FROM halving
    WHERE step > 0
  )
SELECT iif(
  EXISTS (SELECT 1 FROM posts WHERE slug = :slug),
  rtrim(substr(:slug, 1, :max_length - 1 - length(taken + 1)), '-') || '-' || (taken + 1),
  :slug
)
FROM halving
WHERE step = 0
"""

# Which post has this slug: what a write that names a post by its slug is told (a write
# takes the ID only).
SELECT_ID_BY_SLUG = """
SELECT id
FROM posts
WHERE slug = ?
"""

# A new post; with executemany, any number in one call. A post whose slug another post has
# (one stored, or one before it in the same call) is left out.
INSERT_POST = """
INSERT INTO posts (id, slug, title, title_key, content, published, created_at, updated_at)
VALUES (:id, :slug, :title, :title_key, :content, :published, :now, :now)
ON CONFLICT (slug) DO NOTHING
"""

# Which of the post IDs in :ids (a JSON array) are stored.
SELECT_STORED_POST_IDS = """
SELECT id
FROM posts
WHERE id IN (SELECT value FROM json_each(:ids))
"""

# The preconditions of a write (``write_conditions``), checked in its own statement:
# :versions (a JSON array, or NULL for any) is what If-Match allows the post to be at;
# :modified_before (microseconds, or NULL) when If-Unmodified-Since needs it last changed;
# :unwanted_versions (a JSON array, or NULL) what If-None-Match names, and :unwanted_any
# whether it says * (any post at all: a write here never creates one).
WRITE_CONDITIONS = """
      (:versions IS NULL OR version IN (SELECT value FROM json_each(:versions)))
  AND (:modified_before IS NULL OR max(updated_at, comments_changed_at) < :modified_before)
  AND (:unwanted_versions IS NULL OR version NOT IN (SELECT value FROM json_each(:unwanted_versions)))
  AND NOT :unwanted_any
"""

# NULL parameters leave a column as it is; :tags is the new tags as a JSON array, or NULL.
# updated_at moves only when something changes (as in the tutorial), and then to a moment
# strictly after its previous value. With executemany, any number of posts in one call.
UPDATE_POST = f"""
UPDATE posts
SET title = coalesce(:title, title),
    title_key = coalesce(:title_key, title_key),
    content = coalesce(:content, content),
    published = coalesce(:published, published),
    slug = coalesce(:slug, slug),
    updated_at = CASE
        WHEN coalesce(:title, title) IS title
         AND coalesce(:content, content) IS content
         AND coalesce(:published, published) IS published
         AND coalesce(:slug, slug) IS slug
         AND (:tags IS NULL OR :tags IS (
                SELECT json_group_array(name)
                FROM (
                    SELECT tags.name
                    FROM post_tags JOIN tags ON tags.pk = post_tags.tag_pk
                    WHERE post_tags.post_pk = posts.pk
                    ORDER BY post_tags.position
                )
             ))
        THEN updated_at
        ELSE max(:now, updated_at + 1)
    END
WHERE id = :id AND {WRITE_CONDITIONS}
"""

# :posts is a JSON array of objects with a post's id: all their tags are taken away.
DELETE_POST_TAGS = """
DELETE FROM post_tags
WHERE post_pk IN (
    SELECT posts.pk
    FROM json_each(:posts) AS post JOIN posts ON posts.id = json_extract(post.value, '$.id')
)
"""

# :posts is a JSON array of objects with a post's id and its tags (normalised names, in
# order): the tags no post had yet are made, then each post is given its own, in order.
# Two statements, however many posts and tags.
INSERT_TAGS = """
INSERT INTO tags (name)
SELECT tag.value
FROM json_each(:posts) AS post, json_each(post.value, '$.tags') AS tag
WHERE true
ON CONFLICT (name) DO NOTHING
"""

INSERT_POST_TAGS = """
INSERT INTO post_tags (post_pk, tag_pk, position)
SELECT posts.pk, tags.pk, tag.key
FROM json_each(:posts) AS post
JOIN posts ON posts.id = json_extract(post.value, '$.id')
JOIN json_each(post.value, '$.tags') AS tag
JOIN tags ON tags.name = tag.value
"""

# The posts in posts_fts_pending (see schema.sql): take out of posts_fts what it holds for
# them ('delete' in the column named after the table) and index their text as it is now
# (NULL there: a plain insert), in one statement for a batch; then empty the table. In post
# order, each post's 'delete' before its insert: FTS5 writes out what it has gathered at
# the end of every statement, and whenever a post comes before the one it took last (any
# order is correct, this one cheapest), so a batch makes one b-tree in the index. As two
# statements, all the deletes and then all the inserts, a batch of updates made two, and
# an update took 150k instructions more (SQL alone, batches of 32); a create takes 4k more
# here, for the sort.
INDEX_PENDING_POSTS = """
INSERT INTO posts_fts (posts_fts, rowid, title, content)
SELECT command, pk, title, content
FROM (
    SELECT 'delete' AS command, pk, indexed_title AS title, indexed_content AS content, 0 AS step
    FROM posts_fts_pending
    WHERE indexed_title IS NOT NULL
    UNION ALL
    SELECT NULL, posts.pk, posts.title, posts.content, 1
    FROM posts_fts_pending JOIN posts ON posts.pk = posts_fts_pending.pk
)
ORDER BY pk, step
"""

CLEAR_PENDING_POSTS = """
DELETE FROM posts_fts_pending
"""

# The posts whose title_key is not made yet (see schema.sql), and making it.
SELECT_POSTS_WITHOUT_TITLE_KEY = """
SELECT pk, title
FROM posts
WHERE title_key = ''
"""

SET_TITLE_KEY = """
UPDATE posts
SET title_key = ?
WHERE pk = ?
"""

SELECT_TAG_COUNTS = """
SELECT name, post_count
FROM (
    SELECT name, CASE WHEN :drafts THEN post_count ELSE published_post_count END AS post_count
    FROM tags
)
WHERE post_count > 0
ORDER BY name
"""

DELETE_POST = f"""
DELETE FROM posts
WHERE id = :id AND {WRITE_CONDITIONS}
RETURNING id
"""

# What a write's preconditions are checked against, when they fail.
SELECT_POST_STATE = """
SELECT version, max(updated_at, comments_changed_at)
FROM posts
WHERE id = :id
"""

# The routes of a post's comments take its ID or its slug (a slug is never shaped like an ID).
SELECT_POST_PK = """
SELECT pk, published, id
FROM posts
WHERE (id = :post_id OR slug = :post_id) AND (published OR :drafts)
"""

SELECT_IDEMPOTENT_RESPONSE = """
SELECT request_hash, status, location, body
FROM idempotency_keys
WHERE route = :route AND key = :key
"""

INSERT_IDEMPOTENT_RESPONSE = """
INSERT INTO idempotency_keys (route, key, request_hash, status, location, body, created_at)
VALUES (:route, :key, :request_hash, :status, :location, :body, :now)
"""

DELETE_EXPIRED_IDEMPOTENCY_KEYS = """
DELETE FROM idempotency_keys
WHERE created_at < :expired_before
"""

COMMENT_FIELDS = "comments.id, :post_id, comments.author, comments.body, comments.created_at"

# Inserts nothing when the post does not exist: the route answers 404.
INSERT_COMMENT = """
INSERT INTO comments (id, post_pk, created_at, author, body)
SELECT :id, pk, :now, :author, :body
FROM posts
WHERE (id = :post_id OR slug = :post_id) AND (published OR :drafts)
RETURNING (SELECT id FROM posts WHERE pk = post_pk)
"""

SELECT_COMMENT = """
SELECT comments.id, posts.id, comments.author, comments.body, comments.created_at, posts.published
FROM comments JOIN posts ON posts.pk = comments.post_pk
WHERE comments.id = :comment_id AND (posts.id = :post_id OR posts.slug = :post_id) AND (posts.published OR :drafts)
"""

DELETE_COMMENT = """
DELETE FROM comments
WHERE id = :comment_id AND post_pk = (SELECT pk FROM posts WHERE id = :post_id OR slug = :post_id)
RETURNING id
"""

# A post's comments, as the triggers on comments keep their count (posts.comment_count, which
# the post shows). Counted at each read, a post's 100,000 comments took 8.0 ms, for every page
# of them. A post deleted since it was found has none.
COUNT_COMMENTS = """
SELECT coalesce((SELECT comment_count FROM posts WHERE pk = :post_pk), 0)
"""

# A post's comments, oldest or newest first, from a cursor's (created_at, id) on if there is one.
LIST_COMMENTS = f"""
SELECT {COMMENT_FIELDS}, comments.created_at AS sort_key, comments.id AS tiebreak
FROM comments
WHERE {{conditions}}
ORDER BY comments.created_at {{direction}}, comments.id {{direction}}
LIMIT :limit OFFSET :offset
"""

# /health: a real query, answered by a reader as every GET is.
SELECT_SCHEMA_VERSION = """
SELECT user_version FROM pragma_user_version
"""

SELECT_CURSOR_SECRET = """
SELECT value
FROM meta
WHERE key = 'cursor_secret'
"""

# GET /api/posts is assembled from the pieces below. Only these fragments ever go into the
# SQL text, chosen by name from validated parameters; every value is a bound parameter.
# The inner query finds the page (pk, sort key, tie-breaker: the cursors are made from the
# last two); the outer one reads the page's posts, tags and comment counts, for its rows only.
PAGE_OF_POSTS = f"""
SELECT {POST_FIELDS}, page.sort_key, page.tiebreak
FROM ({{page}}) AS page
JOIN posts ON posts.pk = page.pk
ORDER BY page.sort_key {{direction}}, page.tiebreak {{direction}}
"""

LIST_POSTS = """
SELECT pk, {sort_key} AS sort_key, id AS tiebreak
FROM posts{index_hint}
WHERE {conditions}
ORDER BY {sort_key} {direction}, id {direction}
LIMIT :limit OFFSET :offset
"""

# Ranked search: FTS5 scores the matches that pass the filters (rank is bm25 with the weights
# set in schema.sql; FTS5 computes it only for a row that is read past WHERE), and only the
# page's rows are read from posts. Ties are broken by pk, which FTS5 has at hand, so ranking
# reads the posts table only for a filter by date ({join_posts}; a match's row cost 3 µs to
# find, as much as its ranking); CROSS JOIN keeps the search first, as when the matches were
# ranked before they were filtered. MATERIALIZED keeps the score out of the cursor's WHERE.
# Ranking every match first took 13.0 ms for ?q=litestar&tag=python, against 7.3.
LIST_POSTS_BY_RELEVANCE = """
WITH ranked AS MATERIALIZED (
    SELECT posts_fts.rowid AS pk, -posts_fts.rank AS score
    FROM posts_fts{join_posts}
    WHERE posts_fts MATCH :search AND {conditions}
)
SELECT pk, score AS sort_key, pk AS tiebreak
FROM ranked
WHERE {past_cursor}
ORDER BY sort_key {direction}, tiebreak {direction}
LIMIT :limit OFFSET :offset
"""
JOIN_POSTS = " CROSS JOIN posts ON posts.pk = posts_fts.rowid"

COUNT_POSTS = """
SELECT count(*)
FROM posts
WHERE {conditions}
"""

# All the posts, the drafts, or the published ones (all but the drafts), for a listing with no
# filter but published. Without a WHERE, SQLite counts an index's entries a page at a time;
# with one, even WHERE 1, it reads each entry: at 100,000 posts, 1.2 ms against 5.1, and
# counting the 89,943 published posts in the index by published took 10.6 ms, this 1.4.
COUNT_ALL_POSTS = "SELECT count(*) FROM posts"
COUNT_DRAFTS = "SELECT count(*) FROM posts INDEXED BY posts_drafts WHERE published = 0"
COUNT_PUBLISHED_POSTS = f"SELECT ({COUNT_ALL_POSTS}) - ({COUNT_DRAFTS})"

COUNT_SEARCH_MATCHES = """
SELECT count(*)
FROM (SELECT rowid AS pk FROM posts_fts WHERE posts_fts MATCH :search) AS matches
WHERE {conditions}
"""

MATCHES_SEARCH = "pk IN (SELECT rowid FROM posts_fts WHERE posts_fts MATCH :search)"
# The posts of a tag, as the index of posts by tag lists them ({tag} names the parameter that
# holds it); of several tags, those of the first that are in the list of each other one
# (Listing.tagged_posts). Sorting and grouping the posts of all the tags took longer: to list
# a tag's 10,116 posts, 6.7 ms against 0.7; to count two tags' (25,001 posts), 8.7 against 5.1.
TAG_PK = "(SELECT pk FROM tags WHERE name = :{tag})"
POSTS_OF_TAG = f"SELECT post_pk AS pk FROM post_tags WHERE tag_pk = {TAG_PK}"
ALSO_OF_TAG = f" AND +post_pk IN (SELECT post_pk FROM post_tags WHERE tag_pk = {TAG_PK})"
HAS_TAGS = "pk IN ({tagged_posts})"
# Asked of a search's matches ({match_pk}: how the SQL names a match's pk): the + keeps SQLite
# from turning the search around, to ask the search index once per post of the tags (0.44 s
# for a tag on 10,000 posts).
MATCH_HAS_TAGS = "+{match_pk} IN ({tagged_posts})"
# Or each match asked in turn whether it has a tag ({tag} names the parameter that holds it),
# in its rows of post_tags: for a search with few matches on tags with many posts, where
# listing the posts costs more (Listing.asks_matches_for_tags).
MATCH_HAS_TAG = """EXISTS (
    SELECT 1
    FROM post_tags
    WHERE post_tags.post_pk = {match_pk} AND post_tags.tag_pk = (SELECT pk FROM tags WHERE name = :{tag})
)"""
# Which of the two ways above costs less: asking a match costs about three times what listing
# one post of a tag does (:cost). To count ?q=litestar&tag=python (2,053 matches, 10,116
# posts), 2.7 ms asking and 3.6 listing; ?q=zanzibar&tag=python (10 matches) 0.1 and 3.1;
# ?q=the&tag=python (50,186 matches) 32 and 19. The matches are counted only as far as
# that needs (to count all of the's took 3.8 ms).
FEWER_MATCHES_THAN_TAGGED_POSTS = """
WITH enough (matches) AS (
    SELECT coalesce(sum(post_count), 0) / :cost
    FROM tags
    WHERE name IN (SELECT value FROM json_each(:tags))
)
SELECT count(*) < (SELECT matches FROM enough)
FROM (SELECT 1 FROM posts_fts WHERE posts_fts MATCH :search LIMIT (SELECT matches FROM enough))
"""
ASKING_A_MATCH_COSTS = 3
# Whether a post has every tag of :tags (a JSON array of distinct names), asked of each post
# in turn: for a walk down a sort index that stops at a full page, where listing every post
# of the tag first (10,116 of them for a tag on a tenth of 100,000 posts), sorted and grouped,
# took 11 ms, and this 0.7.
POST_HAS_TAGS = """(
    SELECT count(*)
    FROM post_tags
    WHERE post_tags.post_pk = posts.pk
      AND post_tags.tag_pk IN (SELECT pk FROM tags WHERE name IN (SELECT value FROM json_each(:tags)))
) = json_array_length(:tags)"""
# The posts of one tag, counted by the tags table's own counts (kept by triggers).
COUNT_POSTS_OF_TAG = """
SELECT coalesce((SELECT {count} FROM tags WHERE name = :tag), 0)
"""
ALL_POSTS_OF_TAG = "post_count"
PUBLISHED_POSTS_OF_TAG = "published_post_count"
DRAFTS_OF_TAG = "post_count - published_post_count"
# Counted without reading posts, whose rows are large, when no filter needs their columns.
COUNT_TAGGED_POSTS = """
SELECT count(*)
FROM ({tagged_posts}) AS matches
WHERE {conditions}
"""
HAS_PUBLISHED = "published = :published"
PUBLISHED_ONLY = "published = 1"
# The same two filters where the matches of a search or of tags are counted, or ranked,
# without reading posts: each match ({match_pk}) looked up in the index of drafts, not in its
# row, which took 3 µs to find. Listing the drafts first cost 3 to 4 ms at 10,000 drafts: at
# 100,000 posts, ?q=litestar with drafts hidden took 3.8 ms to count and 7.8 to rank that
# way, and 1.0 and 5.4 this way (the editor's: 0.3 and 5.3).
IS_DRAFT = """EXISTS (
    SELECT 1
    FROM posts AS draft INDEXED BY posts_drafts
    WHERE draft.published = 0 AND draft.pk = {match_pk}
)"""
IS_NOT_DRAFT = f"NOT {IS_DRAFT}"
# And asked of each match's row, where SQLite sorts the few matches of a search or a tag: the +
# keeps it from walking the index of published posts instead (for 7 matches: 20 ms, not 0.3).
OF_EACH_MATCH = {HAS_PUBLISHED: "+published = :published", PUBLISHED_ONLY: "+published = 1"}
# A condition no post meets, for drafts asked for by a caller who may not see them: SQLite
# sees it before reading anything (it took up to 50 ms to find no such draft).
NO_POSTS = "0"
CREATED_AFTER = "created_at > :created_after"
CREATED_BEFORE = "created_at < :created_before"
# Rows past a cursor's (key, tiebreak), written so that SQLite searches the sort index by
# the key alone.
KEY_ABOVE = "{key} >= :key AND ({key} > :key OR {tiebreak} > :tiebreak)"
KEY_BELOW = "{key} <= :key AND ({key} < :key OR {tiebreak} < :tiebreak)"

SORT_KEYS = {
    "created_at": "created_at",
    "updated_at": "updated_at",
    "title": "title_key",
    "relevance": "ranked.score",
}
TIEBREAKS = {"created_at": "id", "updated_at": "id", "title": "id", "relevance": "pk"}
# The index that lists posts in each order: over all posts, and within one value of published.
SORT_INDEXES = {
    "created_at": ("posts_by_created_at", "posts_by_published_created_at"),
    "updated_at": ("posts_by_updated_at", "posts_by_published_updated_at"),
    "title": ("posts_by_title", "posts_by_published_title"),
}
SEARCH_PLAN_THRESHOLD = 1000
"""Above this many matches, a search or tag filter sorted by a column walks that column's
index and stops at a full page; below it, SQLite sorts the matches (its own choice either
way would cost 10 to 100 times more at the other end)."""

# python blog_api.py seed: whole rows at once, with the pks chosen by the seeder.
SEED_POST = """
INSERT INTO posts (pk, id, slug, title, title_key, content, published, created_at, updated_at)
VALUES (:pk, :id, :slug, :title, :title_key, :content, :published, :created_at, :created_at)
"""

SEED_POST_TAG = """
INSERT INTO post_tags (post_pk, tag_pk, position)
SELECT ?, pk, ? FROM tags WHERE name = ?
"""

COUNT_DRAFTS_FROM = """
SELECT count(*) FROM posts WHERE pk >= ? AND NOT published
"""

# What a restored database holds, as ``restore`` says it.
COUNT_POSTS_AND_COMMENTS = """
SELECT (SELECT count(*) FROM posts), (SELECT count(*) FROM comments)
"""

# The columns of the posts table of the tutorial's SQLAlchemy app, in a database to import.
SELECT_TUTORIAL_POST_COLUMNS = """
SELECT name FROM pragma_table_info('posts')
"""

# That app's posts, oldest first: of two with one title, the first keeps the title's slug.
# Its timestamps are text in one format (2025-03-12 10:42:35.700944): in text order, in time.
SELECT_TUTORIAL_POSTS = """
SELECT id, title, content, published, created_at, updated_at
FROM posts
ORDER BY created_at, id
"""

# One of them, with its ID, timestamps and published flag as that app stored them.
IMPORT_POST = """
INSERT INTO posts (id, slug, title, title_key, content, published, created_at, updated_at)
VALUES (:id, :slug, :title, :title_key, :content, :published, :created_at, :updated_at)
"""

SEED_COMMENT = """
INSERT INTO comments (id, post_pk, created_at, author, body)
VALUES (?, ?, ?, ?, ?)
"""

SELECT_USER_TABLES = """
SELECT name
FROM sqlite_schema
WHERE type = 'table' AND name NOT LIKE 'sqlite_%'
ORDER BY name
"""

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def utc_now_us() -> int:
    """Now, in microseconds since the Unix epoch: how the database stores time."""
    return time.time_ns() // 1_000


def format_timestamp(microseconds: int) -> str:
    """A stored timestamp as the API shows it: ``2025-03-12T10:42:35.700944Z``."""
    moment = EPOCH + timedelta(microseconds=microseconds)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def stored_timestamp(moment: datetime) -> int:
    """A moment (with its offset) as timestamps are stored: microseconds since the epoch."""
    return (moment - EPOCH) // timedelta(microseconds=1)


def json_array(items: Iterable[str]) -> bytes:
    """A JSON array of items that are JSON already."""
    return f"[{','.join(items)}]".encode()


SEARCH_ITEM = re.compile(r'(?P<left_out>-?)(?:"(?P<phrase>[^"]*)"?|(?P<words>[^\s"]+))')
"""An item of a search, between spaces: words (``node.js`` is two, both wanted) or a "phrase
in quotes" (a quote not closed runs to the end), either with a ``-`` before it for the posts
without it, as WordPress and GitHub read ``-django``. A hyphen inside (``e-mail``) only
parts words."""
SEARCH_TERM = re.compile(r"\w+\*?")
"""A word of a search, in text composed first (NFC): a word character takes no combining
accent, so "cre" and U+0300 then "me", decomposed, was two words, where SQLite's tokenizer
sees one (creme)."""
PHRASE_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class SearchItem:
    """Words of a search that a post must have, or not have (``left_out``), anywhere in its
    title or content, or in a row (``phrase``)."""

    words: list[str]
    phrase: bool = False
    left_out: bool = False

    def fts5(self) -> str:
        """The item in FTS5's syntax, every word quoted, so no input is an FTS5 syntax error."""
        if self.phrase:
            return f'"{" ".join(self.words)}"'
        return " ".join(f'"{word[:-1]}"*' if word.endswith("*") else f'"{word}"' for word in self.words)


def search_items(text: str) -> list[SearchItem]:
    """The items of a search that have words; FTS5's own syntax (AND, OR, NOT, NEAR, ``:``,
    ``^``, parentheses) is words or punctuation here."""
    items = []
    for item in SEARCH_ITEM.finditer(text):
        phrase = item["phrase"] is not None
        words = PHRASE_WORD.findall(item["phrase"]) if phrase else SEARCH_TERM.findall(item["words"])
        if words:
            items.append(SearchItem(words, phrase=phrase, left_out=bool(item["left_out"])))
    return items


def search_sql(items: list[SearchItem]) -> str:
    """An FTS5 query that every wanted item matches (a trailing ``*`` matching a prefix, a
    phrase its words in a row) and no item left out does."""
    wanted = " ".join(item.fts5() for item in items if not item.left_out)
    left_out = [f" NOT ({item.fts5()})" for item in items if item.left_out]
    return f"({wanted}){''.join(left_out)}" if left_out else wanted


def comment_from_row(row: Sequence[Any]) -> Comment:
    """A Comment from the columns of COMMENT_FIELDS."""
    comment_id, post_id, author, body, created_at = row
    return Comment(id=comment_id, post_id=post_id, author=author, body=body, created_at=format_timestamp(created_at))


def sql_statements(script: str) -> list[str]:
    """Split a script into statements the way the sqlite3 shell does (triggers included)."""
    statements, pending = [], ""
    for line in script.splitlines(keepends=True):
        if line.lstrip().startswith("--"):
            continue
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    leftover = [line for line in pending.splitlines() if line.strip() and not line.strip().startswith("--")]
    if leftover:
        raise ValueError(f"the script ends with an incomplete statement: {leftover[0][:80]!r}")
    return statements


# --------------------------------------------------------------------------------------
# Listing: the filters, order and pages of GET /api/posts
# --------------------------------------------------------------------------------------

CURSOR_VERSION = 1
"""Part of every cursor's fingerprint: changing how cursors work makes old ones stale."""
CURSOR_SIGNATURE_BYTES = 16
MAX_SEARCH_TERMS = 16
MIN_PREFIX_LENGTH = 2
"""The shortest prefix a search takes (``li*``), the shortest schema.sql's prefix index keeps:
at 100,000 posts, 16 one-letter prefixes took 1.0 s, 16 two-letter ones 76 ms."""
LINKED_PARAMS = ("sort", "order", "published", "created_after", "created_before", "q", "tag")
"""The query parameters that every Link repeats, besides limit (tags last, each once, normalised)."""
PAGE_PARAMS = ("limit", "offset", "cursor")
PAGE_COUNTS = ("limit", "offset")
OTHER_APIS_PAGE_PARAMS = {
    "page": "a page is chosen with offset, or with the cursor of a Link header",
    "_page": "a page is chosen with offset, or with the cursor of a Link header",
    "per_page": "a page's size is limit, 1 to 100",
    "_limit": "a page's size is limit, 1 to 100",
}
"""The paging parameters of GitHub's and WordPress's APIs (``page``, ``per_page``) and of
json-server (``_page``, ``_limit``), which a client may send from habit: ignored, as other
unknown parameters are, ``?page=2`` answered the first page again."""
OTHER_APIS_POST_FILTERS = {
    **OTHER_APIS_PAGE_PARAMS,
    "search": "search with q",
    "slug": "a post is found by its slug at /api/posts/{slug}",
    "status": "drafts are chosen with published=false",
    "tags": "posts with a tag are chosen with tag, repeated for several",
    "since": "posts created after a moment are chosen with created_after",
    "orderby": "the order is sort, and order (asc or desc)",
    "_sort": "the order is sort, and order (asc or desc)",
    "_order": "the order is sort, and order (asc or desc)",
    "direction": "the order is sort, and order (asc or desc)",
}
"""The same for posts, with the filters and orders of those APIs (WordPress's ``search``,
``slug``, ``status``, ``orderby``; GitHub's ``since``, ``direction``; json-server's
``_sort``, ``_order``): ignored, ``?search=litestar`` answered every post."""
COMMENT_ORDER = "comments are listed oldest first, or newest first with order=desc"
NOT_SEARCHED = "a post's comments are not searched (q searches posts)"
NOT_BY_DATE = "a post's comments are not chosen by date; follow the Link header through their pages"
NOT_COMMENT_PARAMS = {
    **dict.fromkeys(("sort", "orderby", "_sort", "direction", "_order"), COMMENT_ORDER),
    **dict.fromkeys(("q", "search"), NOT_SEARCHED),
    **dict.fromkeys(("created_after", "created_before", "since"), NOT_BY_DATE),
}
"""What a client may send to a post's comments as it does to posts (``sort``, ``q``,
``created_after``), or as GitHub's and WordPress's comment APIs take it (``since``,
``search``, ``orderby``): ignored, ``?q=thanks`` answered every comment."""
TAGS_NOT_PAGED = "tags are not paged: the answer holds every tag in use"
TAGS_NOT_SEARCHED = "tags are not searched: the answer holds every tag in use"
TAGS_BY_NAME = "tags are listed by name"
NOT_TAG_PARAMS = {
    **dict.fromkeys(("limit", "offset", "cursor", *OTHER_APIS_PAGE_PARAMS), TAGS_NOT_PAGED),
    **dict.fromkeys(("q", "search"), TAGS_NOT_SEARCHED),
    **dict.fromkeys(("sort", "order", "orderby", "_sort", "_order", "direction"), TAGS_BY_NAME),
}
"""What a client may send to the tags as it does to posts, or as WordPress's paged list of
tags takes it: ignored, ``?page=2`` answered every tag again, which a client paging until
a page comes back empty asked for without end."""
DIGITS = re.compile(r"[0-9]+")
NO_SEARCH_WORDS = "Expected at least one word to search for"
ONLY_LEFT_OUT_WORDS = "Expected a word to search for, besides the ones to leave out (-word)"
NOT_OUR_CURSOR = "Not a cursor this server made; follow the Link header"
SINGLE_VALUED_LISTING_PARAMS = frozenset(PAGE_PARAMS + LINKED_PARAMS) - {"tag"}


class PageCursor(msgspec.Struct, array_like=True, frozen=True):
    """Where a page starts: after (or before) the row with this sort key and tie-breaker.

    Clients see it as an opaque token, signed with the database's secret so that a forged
    one is refused, and bound to one query by its fingerprint. ``before`` with no key is
    the last page.
    """

    fingerprint: str
    before: bool
    key: int | float | str | None = None
    tiebreak: int | str | None = None


class CursorError(ValueError):
    """A cursor that this server did not make, or made for another query."""


def encode_cursor(cursor: PageCursor, secret: bytes) -> str:
    payload = msgspec.json.encode(cursor)
    signature = hmac.digest(secret, payload, "sha256")[:CURSOR_SIGNATURE_BYTES]
    return base64.urlsafe_b64encode(signature + payload).rstrip(b"=").decode()


def decode_cursor(token: str, secret: bytes) -> PageCursor:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except ValueError:
        raise CursorError("cursor is not a cursor this server made") from None
    signature, payload = raw[:CURSOR_SIGNATURE_BYTES], raw[CURSOR_SIGNATURE_BYTES:]
    expected = hmac.digest(secret, payload, "sha256")[:CURSOR_SIGNATURE_BYTES]
    if not hmac.compare_digest(signature, expected):
        raise CursorError("cursor is not a cursor this server made")
    return msgspec.json.decode(payload, type=PageCursor)


@dataclass(frozen=True)
class Listing:
    """One GET /api/posts request, validated: which posts match, in which order, which page."""

    limit: int = 20
    offset: int = 0
    sort: str = "created_at"  # or updated_at, title, relevance (the default with q)
    descending: bool = True
    published: bool | None = None
    created_after: int | None = None  # microseconds, exclusive
    created_before: int | None = None
    search: str | None = None  # the FTS5 query made from q
    tags: tuple[str, ...] = ()  # normalised, distinct; a post must have all
    drafts_visible: bool = True  # False: unpublished posts are left out, whatever is asked
    cursor: PageCursor | None = None
    link_params: tuple[tuple[str, str], ...] = ()
    """The query parameters every Link repeats (all but offset and cursor)."""
    asks_matches_for_tags: bool = field(default=False, compare=False)
    """Whether a search's matches are asked in turn whether they have the tags, rather than
    looked up in the list of the tags' posts: set by ``planned`` when that costs less."""

    def planned(self, connection: sqlite3.Connection) -> "Listing":
        """This listing, with the cheaper way to filter a search's matches by tags, which
        depends on how many there are of each, where its count or page filters them."""
        if self.search is None or not self.tags or self.asks_for_hidden_drafts:
            return self
        if self.filters_by_date and self.sort != "relevance":  # counted and paged through posts
            return self
        parameters = {"search": self.search, "tags": self.tags_json, "cost": ASKING_A_MATCH_COSTS}
        [(fewer,)] = connection.execute(FEWER_MATCHES_THAN_TAGGED_POSTS, parameters).fetchall()
        return replace(self, asks_matches_for_tags=bool(fewer))

    @property
    def fingerprint(self) -> str:
        """What a cursor must have been made for: the same matches in the same order, by the
        same sort key (so that title's becoming title_key, in schema 5, made older title and
        relevance cursors stale rather than misplaced)."""
        query = [CURSOR_VERSION, SORT_KEYS[self.sort], self.descending, self.published, self.drafts_visible]
        query += [self.created_after, self.created_before, self.search, sorted(self.tags)]
        return hashlib.sha256(msgspec.json.encode(query)).hexdigest()[:16]

    def conditions(
        self, *, with_search: bool, with_tags: bool = True, match_pk: str | None = None
    ) -> tuple[list[str], dict[str, Any]]:
        """The WHERE conditions and parameters of the filters (not of the page); with
        ``match_pk``, the SQL of the pk of a match of a search or of the tags, asked without
        reading its row in posts: whether it is published, of the index of drafts."""
        conditions, parameters = [], {}
        if self.search is not None:
            parameters["search"] = self.search
            if with_search:
                conditions.append(MATCHES_SEARCH)
        if self.published is not None and match_pk:
            conditions.append((IS_NOT_DRAFT if self.published else IS_DRAFT).format(match_pk=match_pk))
        elif self.published is not None:
            conditions.append(HAS_PUBLISHED)
            parameters["published"] = self.published
        if not self.drafts_visible and self.published is None:  # published=false: NO_POSTS, below
            conditions.append(IS_NOT_DRAFT.format(match_pk=match_pk) if match_pk else PUBLISHED_ONLY)
        if self.created_after is not None:
            conditions.append(CREATED_AFTER)
            parameters["created_after"] = self.created_after
        if self.created_before is not None:
            conditions.append(CREATED_BEFORE)
            parameters["created_before"] = self.created_before
        if self.tags:
            parameters.update(self.tag_parameters)
            if with_tags and match_pk and self.asks_matches_for_tags:
                conditions += [MATCH_HAS_TAG.format(match_pk=match_pk, tag=name) for name in self.tag_parameters]
            elif with_tags and match_pk:
                conditions.append(MATCH_HAS_TAGS.format(match_pk=match_pk, tagged_posts=self.tagged_posts))
            elif with_tags:
                conditions.append(HAS_TAGS.format(tagged_posts=self.tagged_posts))
        if self.asks_for_hidden_drafts:
            conditions = [NO_POSTS]
        return conditions, parameters

    @property
    def asks_for_hidden_drafts(self) -> bool:
        """Drafts, asked for by a caller who may not see them: no post matches."""
        return self.published is False and not self.drafts_visible

    @property
    def filters_by_date(self) -> bool:
        return self.created_after is not None or self.created_before is not None

    @property
    def tag_parameters(self) -> dict[str, str]:
        """Each tag asked for, by the name of its parameter in the SQL: tag_0, tag_1, ..."""
        return {f"tag_{number}": tag for number, tag in enumerate(self.tags)}

    @property
    def tags_json(self) -> str:
        """The tags as a JSON array, as :tags in the SQL."""
        return msgspec.json.encode(self.tags).decode()

    @property
    def tagged_posts(self) -> str:
        """The SQL that lists the posts that have every tag asked for."""
        first, *others = self.tag_parameters
        return POSTS_OF_TAG.format(tag=first) + "".join(ALSO_OF_TAG.format(tag=name) for name in others)

    def count_sql(self) -> tuple[str, dict[str, Any]]:
        """How to count the matches: of a search or tags without a filter by date, from the
        search index, the tags table's counts or the list of the tags' posts (and the index of
        drafts); with no filter but published, from all the posts and the index of drafts; with
        a filter by date, through posts."""
        if self.search is not None and not self.filters_by_date:
            conditions, parameters = self.conditions(with_search=False, match_pk="matches.pk")
            return COUNT_SEARCH_MATCHES.format(conditions=all_of(conditions)), parameters
        if (count := self.tag_count_column()) is not None:
            return COUNT_POSTS_OF_TAG.format(count=count), {"tag": self.tags[0]}
        if self.tags and self.search is None and not self.filters_by_date:
            conditions, parameters = self.conditions(with_search=False, with_tags=False, match_pk="matches.pk")
            return COUNT_TAGGED_POSTS.format(tagged_posts=self.tagged_posts, conditions=all_of(conditions)), parameters
        if (count := self.posts_count_sql()) is not None:
            return count, {}
        conditions, parameters = self.conditions(with_search=True)
        return COUNT_POSTS.format(conditions=all_of(conditions)), parameters

    def posts_count_sql(self) -> str | None:
        """How to count the matches when no filter but published chooses them (the first page
        of a blog, say): all the posts, the drafts, or all but the drafts."""
        if self.search is not None or self.tags or self.filters_by_date or self.asks_for_hidden_drafts:
            return None
        if self.published is False:
            return COUNT_DRAFTS
        if self.published is None and self.drafts_visible:
            return COUNT_ALL_POSTS
        return COUNT_PUBLISHED_POSTS

    def tag_count_column(self) -> str | None:
        """The column of ``tags`` that counts the matches, when they are the posts of one tag
        that the caller may see, published or drafts (7 ms of counting for a tag on 10,000 posts)."""
        if len(self.tags) != 1 or self.search is not None or self.filters_by_date:
            return None
        if self.published is None:
            return ALL_POSTS_OF_TAG if self.drafts_visible else PUBLISHED_POSTS_OF_TAG
        if self.published:
            return PUBLISHED_POSTS_OF_TAG
        return DRAFTS_OF_TAG if self.drafts_visible else None

    def page_sql(self, total: int) -> tuple[str, dict[str, Any]]:
        """The page's rows, plus one to tell whether another page follows. A page before a
        cursor is read walking backwards, and turned around by ``fetch_page``."""
        by_relevance = self.sort == "relevance"
        join_posts = by_relevance and self.filters_by_date  # ranking alone reads no column of posts
        has_membership_filter = self.search is not None or bool(self.tags)
        walks_index = has_membership_filter and not by_relevance and total > SEARCH_PLAN_THRESHOLD
        conditions, parameters = self.conditions(
            with_search=not by_relevance,
            with_tags=not walks_index,
            match_pk="posts_fts.rowid" if by_relevance else None,
        )
        if walks_index and self.tags:
            conditions.append(POST_HAS_TAGS)
            parameters["tags"] = self.tags_json
        backwards = self.cursor is not None and self.cursor.before
        descending = self.descending != backwards
        key = SORT_KEYS[self.sort]
        past_cursor = [] if by_relevance else conditions  # ranked matches are past it or not by score
        add_cursor_condition(past_cursor, parameters, self.cursor, descending, key, TIEBREAKS[self.sort])
        parameters.update(limit=self.limit + 1, offset=self.offset)
        template = LIST_POSTS_BY_RELEVANCE if by_relevance else LIST_POSTS
        index_hint = ""
        if walks_index:
            one_value_of_published = self.published is not None or not self.drafts_visible
            index_hint = f" INDEXED BY {SORT_INDEXES[self.sort][one_value_of_published]}"
        elif has_membership_filter and not by_relevance:
            conditions = [OF_EACH_MATCH.get(condition, condition) for condition in conditions]
        direction = "DESC" if descending else "ASC"
        page = template.format(
            sort_key=key,
            direction=direction,
            conditions=all_of(conditions),
            past_cursor=all_of(past_cursor),
            index_hint=index_hint,
            join_posts=JOIN_POSTS if join_posts else "",
        )
        return PAGE_OF_POSTS.format(page=page, direction=direction), parameters


def all_of(conditions: list[str]) -> str:
    return " AND ".join(conditions) or "1"


def add_cursor_condition(
    conditions: list[str],
    parameters: dict[str, Any],
    cursor: PageCursor | None,
    descending: bool,
    key: str,
    tiebreak: str,
) -> None:
    """Keep only the rows past the cursor's (key, tiebreak) in the direction of the walk."""
    if cursor is not None and cursor.key is not None:
        conditions.append((KEY_BELOW if descending else KEY_ABOVE).format(key=key, tiebreak=tiebreak))
        parameters.update(key=cursor.key, tiebreak=cursor.tiebreak)


@dataclass(frozen=True)
class CommentListing:
    """One GET /api/posts/{post_id}/comments request: a post's comments, oldest first unless
    ``descending``."""

    post_id: str
    post_pk: int
    limit: int = 20
    offset: int = 0
    descending: bool = False
    cursor: PageCursor | None = None
    link_params: tuple[tuple[str, str], ...] = ()

    @property
    def fingerprint(self) -> str:
        """What a cursor must have been made for: this post's comments, in this order (an
        oldest-first cursor made before ``order`` was taken is still valid)."""
        query = ["comments", CURSOR_VERSION, self.post_pk, *(["desc"] if self.descending else [])]
        return hashlib.sha256(msgspec.json.encode(query)).hexdigest()[:16]

    def planned(self, connection: sqlite3.Connection) -> "CommentListing":
        return self  # a post's comments are read one way

    def count_sql(self) -> tuple[str, dict[str, Any]]:
        return COUNT_COMMENTS, {"post_pk": self.post_pk}

    def page_sql(self, total: int) -> tuple[str, dict[str, Any]]:
        conditions = ["comments.post_pk = :post_pk"]
        parameters = {"post_pk": self.post_pk, "post_id": self.post_id, "limit": self.limit + 1, "offset": self.offset}
        backwards = self.cursor is not None and self.cursor.before
        descending = self.descending != backwards
        add_cursor_condition(conditions, parameters, self.cursor, descending, "comments.created_at", "comments.id")
        sql = LIST_COMMENTS.format(conditions=all_of(conditions), direction="DESC" if descending else "ASC")
        return sql, parameters


@dataclass(frozen=True)
class Page:
    rows: list[Any]
    """The rows of the page, without their sort key and tie-breaker."""
    total: int
    """Every post the filters match, on any page."""
    first_row: tuple[Any, Any] | None
    last_row: tuple[Any, Any] | None
    """(sort key, tie-breaker) of the first and last posts, for the cursors around them."""
    has_previous: bool
    has_next: bool
    renderings: dict[str, "RenderedPage"] = field(default_factory=dict, compare=False, repr=False)
    """The page as sent, by request path: requests for the same page that were answered by
    one read (``Coalescer``), or from the cache, share one rendering of its body, links and ETag."""


@dataclass(frozen=True)
class RenderedPage:
    """A page as it is sent: its JSON body, its X-Total-Count, Link and ETag headers, and
    whether a draft is on it (which makes it private)."""

    body: bytes
    headers: Mapping[str, str]
    includes_drafts: bool


def page_of(listing: Listing | CommentListing, total: int, rows: list[Any]) -> Page:
    """A page of ``listing`` from what ``count_and_page`` read: its rows (each but its last
    two columns, the sort key and tie-breaker), the total, and whether pages lie either side."""
    beyond = len(rows) > listing.limit
    rows = rows[: listing.limit]
    cursor = listing.cursor
    if cursor is not None and cursor.before:
        rows.reverse()
        has_previous, has_next = beyond, cursor.key is not None
    else:
        has_previous, has_next = cursor is not None or listing.offset > 0, beyond
    return Page(
        rows=[row[:-2] for row in rows],
        total=total,
        first_row=(rows[0][-2], rows[0][-1]) if rows else None,
        last_row=(rows[-1][-2], rows[-1][-1]) if rows else None,
        has_previous=has_previous,
        has_next=has_next,
    )


def count_and_page(listing: Listing | CommentListing, connection: sqlite3.Connection) -> tuple[int, list[Any]]:
    """How many match, and the rows of the page, from one snapshot of the database."""
    with read_snapshot(connection):
        listing = listing.planned(connection)
        count_sql, count_parameters = listing.count_sql()
        [(total,)] = connection.execute(count_sql, count_parameters).fetchall()
        page_sql, page_parameters = listing.page_sql(total)
        return total, connection.execute(page_sql, page_parameters).fetchall()


def pages_of(listings: list[Listing], connection: sqlite3.Connection) -> dict[Listing, Page]:
    """The pages of several listings, each counted and read in a snapshot, in one hop."""
    return {listing: page_of(listing, *count_and_page(listing, connection)) for listing in listings}


def render_page(
    path: str, listing: Listing | CommentListing, page: Page, secret: bytes, body: bytes, includes_drafts: bool
) -> RenderedPage:
    """The page's JSON ``body`` with its total, its links and an ETag over all three."""
    headers = {"X-Total-Count": str(page.total)}
    if links := page_links(path, listing, page, secret):
        headers["Link"] = links
    headers["ETag"] = page_etag(body, headers)
    return RenderedPage(body, headers, includes_drafts)


def render_posts_page(path: str, listing: Listing, page: Page, secret: bytes) -> RenderedPage:
    """A page of posts, rendered once however many requests it answers."""
    rendered = page.renderings.get(path)
    if rendered is None:
        body = json_array(post_json for *_, post_json in page.rows)
        includes_drafts = any(not published for _, _, _, published, _, _ in page.rows)
        rendered = page.renderings[path] = render_page(path, listing, page, secret, body, includes_drafts)
    return rendered


def page_links(path: str, listing: Listing | CommentListing, page: Page, secret: bytes) -> str:
    """The Link header (RFC 8288): first, prev, next and last, where they exist. Every link
    but first carries a cursor, so following next visits each post once even while posts
    are created or deleted (offsets would skip or repeat some)."""

    def link(relation: str, cursor: PageCursor | None) -> str:
        params = list(listing.link_params)
        if cursor is not None:
            params.append(("cursor", encode_cursor(cursor, secret)))
        return f'<{quote(path)}?{urlencode(params)}>; rel="{relation}"'  # a URI: ASCII, percent-encoded

    fingerprint = listing.fingerprint
    links = []
    if page.has_previous:
        links.append(link("first", None))
        before_first = page.first_row or (None, None)
        links.append(link("prev", PageCursor(fingerprint, True, *before_first)))
    if page.has_next and page.last_row is not None:
        links.append(link("next", PageCursor(fingerprint, False, *page.last_row)))
        links.append(link("last", PageCursor(fingerprint, True)))
    return ", ".join(links)


def listing_from_query(
    request: Request,
    secret: bytes,
    *,
    drafts_visible: bool,
    limit: int,
    offset: int,
    cursor: str | None,
    sort: str | None,
    order: str | None,
    published: bool | None,
    created_after: str | None,
    created_before: str | None,
    q: str | None,
    tag: list[str] | None,
) -> Listing:
    """Check the query parameters together (each was checked alone by its type) and make a
    Listing; a problem is a 400 naming the parameter."""
    refuse_repeated_parameters(request, SINGLE_VALUED_LISTING_PARAMS)
    refuse_foreign_parameters(request, OTHER_APIS_POST_FILTERS)
    refuse_counts_not_in_digits(request)
    search = None
    if q is not None:
        items = search_items(composed(q))
        terms = [word for item in items for word in item.words]
        if not terms:
            raise query_error(request, "q", NO_SEARCH_WORDS)
        if len(terms) > MAX_SEARCH_TERMS:
            raise query_error(request, "q", f"Expected at most {MAX_SEARCH_TERMS} words")
        if short := next((term for term in terms if term.endswith("*") and len(term) <= MIN_PREFIX_LENGTH), None):
            message = f"Expected {MIN_PREFIX_LENGTH} characters or more before a *, not {short}: fewer match most words"
            raise query_error(request, "q", message)
        if all(item.left_out for item in items):
            raise query_error(request, "q", ONLY_LEFT_OUT_WORDS)
        search = search_sql(items)
    tags = tuple(dict.fromkeys(normalized_tag(name) for name in tag or ()))  # one that cannot exist matches nothing
    if "" in tags:  # ?tag=$TAG with TAG unset, say: it matched nothing, a page as empty as a right one
        raise query_error(request, "tag", "Expected a tag's name, not a blank one")
    if len(tags) > MAX_TAGS:
        raise query_error(request, "tag", f"Expected at most {MAX_TAGS} tags: a post has no more")
    if cursor is not None and offset:
        raise query_error(request, "offset", "Use either offset or cursor, not both")
    # The query as read: each tag once, as a Link to a page of it needs no more.
    link_params = [("limit", str(limit))]
    queried = request.query_params.multi_items()
    link_params += [(name, value) for name, value in queried if name in LINKED_PARAMS and name != "tag"]
    link_params += [("tag", name) for name in tags]
    listing = Listing(
        limit=limit,
        offset=offset,
        sort=sort or ("relevance" if search else "created_at"),
        descending=order != "asc",
        published=published,
        created_after=parse_moment(request, "created_after", created_after),
        created_before=parse_moment(request, "created_before", created_before),
        search=search,
        tags=tags,
        drafts_visible=drafts_visible,
        link_params=tuple(link_params),
    )
    if cursor is None:
        return listing
    return replace(listing, cursor=cursor_for(request, cursor, secret, listing.fingerprint))


def cursor_for(request: Request, token: str | None, secret: bytes, fingerprint: str) -> PageCursor | None:
    """The cursor a client sent, checked: made by this server, for this very query."""
    if token is None:
        return None
    try:
        cursor = decode_cursor(token, secret)
    except (CursorError, msgspec.DecodeError):
        raise query_error(request, "cursor", NOT_OUR_CURSOR) from None
    if cursor.fingerprint != fingerprint:
        raise query_error(
            request, "cursor", "The cursor belongs to another query (sort, order or filters changed) or is stale"
        )
    return cursor


def parse_moment(request: Request, name: str, value: str | None) -> int | None:
    """An RFC 3339 date-time with an offset, as the database stores it (microseconds since
    the Unix epoch, UTC), or a 400 naming the parameter."""
    if value is None:
        return None
    moment = rfc3339_moment(value)
    if moment is None:
        message = "Expected an RFC 3339 date-time with an offset, like 2025-03-12T10:42:35Z"
        if rfc3339_moment(PLUS_READ_AS_SPACE.sub("+", value)) is not None:
            message += "; a + in a query string is read as a space: send it as %2B"
        elif rfc3339_moment(LEAP_SECOND.sub(":59", value)) is not None:
            message += "; a leap second (:60) is not taken here: send :59"
        raise query_error(request, name, message)
    return stored_timestamp(moment)


PLUS_READ_AS_SPACE = re.compile(r" (?=\d\d:\d\d$)")
"""Where ``+05:00``, typed into a URL as it is, leaves a space: a query string's ``+`` is one."""
LEAP_SECOND = re.compile(r"(?<=[Tt ]\d\d:\d\d):60(?=[.Zz+ -])")
"""The seconds of a leap second (``23:59:60Z``), valid in RFC 3339, which Python's datetime
cannot hold (Go's RFC 3339 parser refuses them too)."""


def rfc3339_moment(value: str) -> datetime | None:
    """``value`` as a date-time with an offset, or None if it is not one."""
    try:
        moment = msgspec.convert(value, datetime)
    except msgspec.ValidationError:
        return None
    return None if moment.utcoffset() is None else moment


def refuse_repeated_parameters(request: Request, single_valued: Collection[str]) -> None:
    """A parameter that takes one value, given twice (``?limit=5&limit=50``), is ambiguous:
    Litestar would quietly take the last. A 400 naming it instead."""
    seen = set()
    for name, _ in request.query_params.multi_items():
        if name in seen and name in single_valued:
            raise query_error(request, name, "Expected one value, not several")
        seen.add(name)


def refuse_foreign_parameters(request: Request, others: Mapping[str, str], of: str = "this API") -> None:
    """A 400 for a parameter of another API (``OTHER_APIS_PAGE_PARAMS``,
    ``OTHER_APIS_POST_FILTERS``), or of another listing (``NOT_COMMENT_PARAMS``,
    ``NOT_TAG_PARAMS``), saying what this one takes instead. It looks up the few parameters
    sent, not every name it knows: a page is asked for on every visit."""
    for name in request.query_params:
        if (instead := others.get(name)) is not None:
            raise query_error(request, name, f"Not a parameter of {of}: {instead}")


def refuse_counts_not_in_digits(request: Request) -> None:
    """msgspec reads a number in a query as JSON writes one: ``limit=1e1`` as 10 and
    ``limit=5.0`` as 5, where ``5.5`` is refused. A count is written in digits alone."""
    for name in PAGE_COUNTS:
        value = request.query_params.get(name)
        if value is not None and not DIGITS.fullmatch(value):
            raise query_error(request, name, "Expected a whole number")


def query_error(request: Request, key: str, message: str) -> ValidationException:
    """Litestar's own 400 for a bad query parameter, naming it."""
    return ValidationException(
        detail=validation_detail(request), extra=[{"message": message, "key": key, "source": "query"}]
    )


# --------------------------------------------------------------------------------------
# The database: one writer connection and a pool of readers
# --------------------------------------------------------------------------------------


SYNCHRONOUS_PRAGMAS = {mode: f"PRAGMA synchronous = {mode.upper()}" for mode in SYNCHRONOUS_MODES}


class DatabaseError(Exception):
    """The database cannot be opened or used; the message says why, for a person."""


def read_schema() -> str:
    """schema.sql, which comes with blog_api.py: a copy of the module alone (embedded in a
    demo, say) serves a database made already, but cannot make one."""
    try:
        return SCHEMA_PATH.read_text(encoding="utf-8")
    except OSError as exc:
        raise DatabaseError(
            f"cannot read the schema {str(SCHEMA_PATH)!r} to make the database: {exc.strerror} "
            "(schema.sql comes with blog_api.py: keep the two side by side)"
        ) from None


def file_identity(path: str) -> tuple[int, int] | None:
    """The file at ``path`` (its device and inode; None if there is none): another name for
    it has the same, a file put in its place another."""
    try:
        status = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return status.st_dev, status.st_ino


def beside(path: str, suffix: str) -> str:
    """The name of the database's ``-wal`` or ``-shm`` file (``suffix``): beside the file
    itself, where a symbolic link at ``path`` leads, as SQLite makes them."""
    return os.path.realpath(path) + suffix


def wal_holds_changes(path: str) -> bool:
    """Whether the database at ``path`` has a WAL with changes not yet in its file."""
    wal = Path(beside(path, "-wal"))
    return wal.exists() and wal.stat().st_size > 0


def database_file_identities(path: str) -> dict[str, tuple[int, int]]:
    """The database file's identity, by its absolute path (a relative one changes with the
    working folder's name), and its WAL's and shared index's, those that exist."""
    files = (os.path.abspath(path), beside(path, "-wal"), beside(path, "-shm"))
    return {name: identity for name in files if (identity := file_identity(name))}


def database_moved_error(path: str) -> sqlite3.OperationalError:
    """What SQLite raises when a rollback-journal database it writes has been moved, for the
    same in WAL mode, which SQLite does not check (``Database.moved_file``)."""
    error = sqlite3.OperationalError(
        f"the database file {path!r} was moved, replaced or deleted while blog_api served it: restart blog_api"
    )
    error.sqlite_errorcode = sqlite3.SQLITE_READONLY_DBMOVED
    error.sqlite_errorname = "SQLITE_READONLY_DBMOVED"
    return error


def read_only_uri(path: str, *, immutable: bool = False) -> str:
    """The URI that opens ``path`` without writing it; ``immutable``: as an unchanging file."""
    return f"file:{quote(os.path.abspath(path))}?mode=ro" + ("&immutable=1" if immutable else "")


def must_read_as_immutable(path: str) -> bool:
    """Whether SQLite can read ``path`` only as an unchanging file (``immutable=1``): a WAL
    database in a folder that cannot be written (a read-only mount, read-only media),
    without its ``-shm`` file. SQLite reads a WAL database through that file, which it
    makes beside the database for readers and writers to share, and fails with "unable to
    open database file" when it cannot. With no ``-wal`` file beside it either (or an empty
    one), every change is in the database file and no program has it open to write (a
    writer would have made both): it is read as SQLite's documentation says read-only
    media are. Any other failure is left for the caller's own open to report."""
    try:
        with closing(sqlite3.connect(read_only_uri(path), uri=True)) as connection:
            connection.execute("SELECT 1 FROM sqlite_schema LIMIT 1")
    except sqlite3.OperationalError as exc:
        return exc.sqlite_errorcode == sqlite3.SQLITE_CANTOPEN and Path(path).is_file() and not wal_holds_changes(path)
    return False


T = TypeVar("T")
Work = Callable[[sqlite3.Connection], T]
"""Statements to run on one connection, in its own thread: one hop however many there are."""


class Hop(Generic[T]):
    """``Work`` as handed to a connection's thread, which lets go of it and of its result
    once they have been taken. aiosqlite's thread holds its last call and that call's result
    until its next call: an idle reader kept the pages it read last. After 64 requests at
    once for pages of 100 posts of 100 KB, blog_api held 870 MB that no request used (now
    72 MB, once the allocator has given back what is free)."""

    __slots__ = ("_result", "_work")

    def __init__(self, work: Work[T]) -> None:
        self._work: Work[T] | None = work
        self._result: T | None = None

    def __call__(self, connection: sqlite3.Connection) -> None:
        work, self._work = self._work, None
        self._result = work(connection)  # type: ignore[misc]  # a hop runs once

    def take_result(self) -> T:
        result, self._result = self._result, None
        return result  # type: ignore[return-value]


Together = Callable[[sqlite3.Connection, list[Any]], list[Any]]
"""Many writes of one kind in one go, each given as its row: a few statements, however
many rows. Returns each one's result, in order, or None for one it left undone, which then
runs alone (its own ``Work``)."""

MAX_WRITES_PER_COMMIT = 256
"""Group commit takes at most this many waiting writes into one transaction."""

GATHER_TURNS = 4
"""How many turns the event loop takes before the writer takes the writes waiting: enough
for those that clients send as soon as the last commit answered them (see
``Database._commit_queued_writes``)."""

CHECKPOINT_INTERVAL_SECONDS = 0.1
"""How often, at most, the checkpointer copies the WAL's new pages into the database file:
after a commit, once the last checkpoint has ended and this long after it began (see
``Database._checkpoint_soon``)."""

CHECKPOINT_WAL = "PRAGMA wal_checkpoint(PASSIVE)"
"""PASSIVE: copies what it can without waiting for the writer or the readers, or holding
them up."""

THREAD_EXIT_SECONDS = 5
"""How long closing waits for a connection's worker thread to return once told to stop."""


@contextmanager
def immediate_transaction(connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` (take the write lock now, waiting up to the busy timeout, rather
    than fail when a read upgrades), COMMIT at the end, ROLLBACK on any exception."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield connection
        connection.execute("COMMIT")
    except BaseException:
        connection.rollback()
        raise


def index_pending_posts(connection: sqlite3.Connection) -> None:
    """Bring the search index up to date with every post written in this transaction (or by
    another program since blog_api last did)."""
    for statement in (INDEX_PENDING_POSTS, CLEAR_PENDING_POSTS):
        connection.execute(statement)


def make_title_keys(connection: sqlite3.Connection) -> None:
    """Make the ``title_key`` of every post that has none yet: one another program wrote or
    retitled, or every post of a database just upgraded. Usually none: an index lookup."""
    if missing := connection.execute(SELECT_POSTS_WITHOUT_TITLE_KEY).fetchall():
        connection.executemany(SET_TITLE_KEY, [(title_sort_key(title), pk) for pk, title in missing])


@contextmanager
def write_transaction(connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``immediate_transaction``, with the search index and the titles' sort keys brought up
    to date just before its COMMIT: once per transaction, however many posts it wrote (see
    schema.sql)."""
    with immediate_transaction(connection):
        yield connection
        index_pending_posts(connection)
        make_title_keys(connection)


@contextmanager
def read_snapshot(connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One read transaction, so that several statements see the same moment of the database."""
    connection.execute("BEGIN")
    try:
        yield connection
    finally:
        connection.rollback()


def fetch_rows(sql: str, parameters: Sequence[Any] | Mapping[str, Any], connection: sqlite3.Connection) -> list[Any]:
    return connection.execute(sql, parameters).fetchall()


WRITE_LOCK_SUFFIX = "-writelock"


class WriteLock:
    """Lets the writers of several processes on one database (``--workers``) take turns,
    each woken as soon as it is its turn.

    SQLite's write lock keeps no queue: a writer that finds it taken waits in SQLite's busy
    handler, which sleeps 1, 2, 5, 10, ... up to 100 ms between tries. Under load, two
    workers' writes waited 230 to 680 ms at p99, and the lock often lay free while the other
    worker slept. This is a ``flock`` on a file next to the database, taken before ``BEGIN
    IMMEDIATE`` and let go after the COMMIT: a waiter sleeps in the kernel, and is woken when
    the holder lets go. Programs that do not take it still meet SQLite's lock and its busy
    timeout.

    The file is left in place: removing a lock file that another process may be about to
    lock would let two writers each lock a different file. A worker that hangs while holding
    the lock stops answering uvicorn's health checks and is killed, and the kernel lets go of
    its lock then.
    """

    def __init__(self, database_path: str) -> None:
        self.path = database_path + WRITE_LOCK_SUFFIX
        self._fd: int | None = None

    def open(self) -> None:
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise DatabaseError(f"cannot open the workers' write lock {self.path!r}: {exc.strerror}") from exc

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc_info: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)


class WriteFailed(Exception):
    """A write of a batch raised ``error``: the batch's transaction is rolled back."""

    def __init__(self, error: Exception) -> None:
        super().__init__(error)
        self.error = error


@dataclass
class QueuedWrite:
    work: Work[Any]
    answer: asyncio.Future[Any]
    request_id: str
    together: Together | None = None
    row: Any = None


class Database:
    """One SQLite file, served to async code the way Datasette does it, with fewer hops.

    Each aiosqlite connection owns a worker thread that runs its calls in order, and each
    call is a hop to that thread and back, which costs more than a primary-key lookup in
    SQLite. So every read and every write here is a plain function of a ``sqlite3``
    connection (a ``Work``) that runs in the connection's thread in one hop, however many
    statements it runs.

    Reads take any idle reader connection, so they never wait for a write (WAL). Writes are
    queued for the single writer connection, which takes every write waiting into one
    ``BEGIN IMMEDIATE`` transaction (group commit): one hop and one fsync for all of them,
    and one call of a few statements for all those of one kind (``Together``: new posts,
    updates). One that fails (a taken slug, a 404) is undone alone (see ``_run_batch``);
    each is answered only once the COMMIT that holds it has returned.

    A ``:memory:`` database exists only inside one connection, so there the writer serves
    reads too: each read and each batch of writes is a single call on its thread, so a
    read never sees half a transaction.

    ``data_version()`` tells the event loop, without a hop, whether anything has changed
    since it last asked, so that what was read can be kept until then (``ReadCache``).

    With ``write_lock``, the writer takes a ``WriteLock`` for each transaction, so that the
    writers of several processes (``--workers``) take turns without waiting in SQLite's
    busy handler.

    Without ``write_lock``, the writer never checkpoints: a connection of its own, the
    checkpointer, copies the WAL into the database file after commits (``_checkpoint_soon``).
    """

    def __init__(
        self,
        path: str,
        *,
        readers: int = 4,
        busy_timeout_ms: int = 5000,
        echo_sql: bool = False,
        read_only: bool = False,
        synchronous: str = "full",
        write_lock: bool = False,
    ) -> None:
        self.path = path
        self.read_only = read_only
        self.immutable = False
        """Read as an unchanging file: a change made to it while open is not seen."""
        self._read_only_uri = read_only_uri(path)
        self._synchronous_pragma = SYNCHRONOUS_PRAGMAS[synchronous]
        self._echo_sql = echo_sql
        self._serving: dict[int, str] = {}
        """Which request each connection is serving (by id()), for its SQL log lines."""
        self._last_logged: dict[int, tuple[str, str]] = {}
        self.in_memory = path == ":memory:"
        self._reader_count = 0 if self.in_memory else readers
        self._busy_timeout_ms = busy_timeout_ms
        self._writer: aiosqlite.Connection | None = None
        self._write_lock = WriteLock(path) if write_lock and fcntl is not None and not self.in_memory else None
        self._writers_turn: AbstractContextManager[None] = self._write_lock or nullcontext()
        self.cursor_secret = b""
        self._writes: asyncio.Queue[QueuedWrite | None] = asyncio.Queue()
        self._committer: asyncio.Task[None] | None = None
        self._readers: list[aiosqlite.Connection] = []
        self._idle_readers: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
        self._version_reader: sqlite3.Connection | None = None
        self._version_this_turn: int | None = None
        self._batches_committed = 0
        self._file_identities: dict[str, tuple[int, int]] = {}
        """The database file's, its WAL's and its shared index's, as the writer opened them."""
        self._moved_file: str | None = None
        self._checkpoints_apart = not self.in_memory and self._write_lock is None
        """Whether a connection of its own checkpoints (``_checkpoint_soon``), or the writer's
        COMMIT, as SQLite does by default: with ``--workers``. There a checkpoint must hold
        the other workers' writers off (``WriteLock``) to copy every frame, as a COMMIT does,
        and a checkpointer doing so gained nothing (an A/B of 6 wrk rounds at two workers:
        POST at 1.02 times the rate)."""
        self._checkpointer: aiosqlite.Connection | None = None
        self._checkpoint: asyncio.Task[None] | None = None
        self._last_checkpoint_began = -math.inf

    async def open(self) -> None:
        """Open every connection and bring the schema up to date; on failure, close all."""
        if sqlite3.sqlite_version_info < MIN_SQLITE_VERSION:
            needed = ".".join(map(str, MIN_SQLITE_VERSION))
            raise DatabaseError(f"blog_api needs SQLite {needed} or newer; Python here has {sqlite3.sqlite_version}")
        try:
            if self.read_only:
                await self._open_read_only()
                self._version_reader = self._connect_version_reader()
                return
            self._writer = await self._connect()  # first: SQLite's error names a missing folder
            if self._write_lock is not None:
                self._write_lock.open()
            self.cursor_secret = await self._call(self._writer, self._prepare_writer)
            if not self.in_memory:  # in WAL mode now, with its two files
                self._file_identities = database_file_identities(self.path)
            for _ in range(self._reader_count):
                reader = await self._connect()
                await reader.execute("PRAGMA query_only = ON")
                self._readers.append(reader)
                self._idle_readers.put_nowait(reader)
            if not self.in_memory:
                self._version_reader = self._connect_version_reader()
            if self._checkpoints_apart:
                # Not traced: no request's work, as when the writer's COMMIT checkpointed.
                self._checkpointer = await self._connect(traced=False)
                # Its fsyncs make the database file durable before the writer writes over the WAL.
                await self._checkpointer.execute(self._synchronous_pragma)
            self._committer = asyncio.create_task(self._commit_queued_writes())
        except BaseException as exc:
            await self.close()
            if isinstance(exc, sqlite3.Error):
                raise DatabaseError(f"cannot use the database {self.path!r}: {exc}{self._why_not_opened()}") from exc
            raise

    def _why_not_opened(self) -> str:
        """What SQLite's "unable to open database file" may not say: a missing folder or file,
        a folder where the file should be, or one that cannot be written."""
        path = Path(self.path)
        if self.in_memory:
            return ""
        if path.is_dir():
            return f" (it is a folder; name a file in it, like {str(path / 'blog.db')!r})"
        if not self.read_only and path.parent.is_dir() and not os.access(path.parent, os.W_OK):
            return (
                f" (the folder {str(path.parent)!r} cannot be written, and SQLite writes the database there with a "
                "-wal and a -shm file beside it; --read-only serves a database made already as it is)"
            )
        if path.exists():
            if self.read_only and wal_holds_changes(self.path) and not Path(beside(self.path, "-shm")).exists():
                wal = Path(beside(self.path, "-wal")).name
                return (
                    f" (its folder cannot be written, and SQLite reads the changes in {wal!r} only through a "
                    "-shm file it makes beside them: serve it from a folder that can be written)"
                )
            return ""
        if not path.parent.is_dir():
            return f" (there is no folder {str(path.parent)!r})"
        return " (there is no such file; --read-only serves one that exists)" if self.read_only else ""

    async def _open_read_only(self) -> None:
        """Readers only, opened read-only (``mode=ro``): the schema must already be current.
        A database that SQLite can read only as an unchanging file (a read-only mount) is
        read so (``immutable``)."""
        if await asyncio.to_thread(must_read_as_immutable, self.path):
            self.immutable = True
            self._read_only_uri = read_only_uri(self.path, immutable=True)
        for _ in range(self._reader_count):
            reader = await self._connect(self._read_only_uri)
            await reader.execute("PRAGMA query_only = ON")
            self._readers.append(reader)
            self._idle_readers.put_nowait(reader)
        version = await self._call(self._readers[0], self._schema_version_of_ours)
        if version != SCHEMA_VERSION:  # older: serving it once upgrades it
            raise DatabaseError(
                f"the database {self.path!r} has schema version {version}, not {SCHEMA_VERSION}: serve it once "
                "without --read-only to create or upgrade it"
            )
        [(self.cursor_secret,)] = await self.fetch_all(SELECT_CURSOR_SECRET)

    async def close(self) -> None:
        """Finish the writes already queued, then close every connection: each one's thread
        would otherwise keep the process alive.

        If closing is cancelled (a second Ctrl-C forces uvicorn out), the writes not yet
        begun are dropped unanswered (never acknowledged) and the connections not yet
        reached are still told to stop, so no thread outlives the app.
        """
        committer, self._committer = self._committer, None
        if self._version_reader is not None:
            self._version_reader.close()
            self._version_reader = None
        connections = [
            *self._readers,
            *([self._checkpointer] if self._checkpointer else []),
            *([self._writer] if self._writer else []),
        ]
        not_yet_closed = iter(connections)
        try:
            if committer is not None:
                self._writes.put_nowait(None)
                await committer
            await self._checkpoint_ended()
            await self.moved_file()  # seen now, its WAL is emptied before the connections close
            for connection in not_yet_closed:
                await connection.close()
            # close() answers from the worker thread just before that thread returns; wait
            # the moment it takes to return, so no thread outlives close().
            for connection in connections:
                connection._thread.join(THREAD_EXIT_SECONDS)
        finally:
            if committer is not None:
                committer.cancel()
            for connection in not_yet_closed:
                connection.stop()
            self._readers, self._writer, self._idle_readers = [], None, asyncio.Queue()
            self._checkpointer = None
            if self._write_lock is not None:
                self._write_lock.close()

    async def _connect(self, uri: str | None = None, *, traced: bool = True) -> aiosqlite.Connection:
        """A connection; with --echo-sql and ``traced``, its statements are logged."""
        # isolation_level=None: no implicit transactions; we say BEGIN and COMMIT ourselves.
        if uri is None:
            connection = aiosqlite.connect(self.path, isolation_level=None)
        else:
            connection = aiosqlite.connect(uri, uri=True, isolation_level=None)
        try:
            await connection
        except BaseException:
            # When the file cannot be opened, aiosqlite 0.22 stops its worker thread without
            # waiting for it, and the thread then reports to an event loop that may have closed
            # (omnilib/aiosqlite#389). Wait for it, so a failed start ends quietly.
            await asyncio.to_thread(connection._thread.join, THREAD_EXIT_SECONDS)
            raise
        try:
            if self._echo_sql and traced:
                await connection.set_trace_callback(partial(self._log_statement, id(connection)))
            await connection.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
            await connection.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            await connection.close()
            raise
        return connection

    def _connect_version_reader(self) -> sqlite3.Connection:
        """A plain connection used by the event loop itself, for ``PRAGMA data_version`` alone.
        With no busy timeout, it can never make the loop wait."""
        return sqlite3.connect(self._read_only_uri, uri=True, isolation_level=None, check_same_thread=False)

    def data_version(self) -> int | None:
        """A number that changes whenever anything is committed to the database, by this
        process or any other; None when it cannot tell (a busy moment: rare, and brief).

        SQLite's ``PRAGMA data_version`` reads this from the WAL's shared index, so the event
        loop asks it directly. A connection's own commits do not move its data version, which
        is why this one never writes. In a ``:memory:`` database, which only this process can
        write, the number of write batches committed serves instead.

        The answer is kept for the rest of the event loop's turn: the PRAGMA takes a WAL read
        lock and lets it go (three system calls), which was 12% of a cached GET one's time
        (py-spy) when every request asked. Nothing is lost by it: the answer is forgotten
        before any callback scheduled after it was read runs, so whatever happened later (a
        request that arrived, a read or a write that finished) is seen with a version read
        later."""
        if self._version_reader is None:
            return self._batches_committed if self.in_memory else None
        if self._version_this_turn is not None:
            return self._version_this_turn
        try:
            # fetchall, not fetchone: a statement left unfinished would keep its read open.
            [(version,)] = self._version_reader.execute("PRAGMA data_version").fetchall()
        except sqlite3.Error:
            return None
        self._version_this_turn = version
        asyncio.get_running_loop().call_soon(self._forget_data_version)
        return version

    def _forget_data_version(self) -> None:
        self._version_this_turn = None

    @staticmethod
    async def _call(connection: aiosqlite.Connection, work: Work[T]) -> T:
        """Run ``work`` in ``connection``'s thread: one hop. aiosqlite's public methods make
        one hop per statement; this is the method they are all built on (aiosqlite is pinned,
        and every test goes through here)."""
        hop = Hop(work)
        await connection._execute(hop, connection._conn)
        return hop.take_result()

    def _log_statement(self, connection_id: int, sql: str) -> None:
        """--echo-sql: each statement with its parameters bound, as the connection's thread
        runs it, under the ID of the request it serves (all of a batch's, for what its writes
        share: see ``_run_batch``). SQLite also reports the statements that triggers and
        FTS5 run inside it ("-- ..."), and the statement again for each trigger it fires:
        those are left out."""
        request_id = self._serving.get(connection_id, "-")
        line = escape_for_log(" ".join(sql.split()))
        if line.startswith("--") or self._last_logged.get(connection_id) == (request_id, line):
            return
        self._last_logged[connection_id] = (request_id, line)
        sql_logger.info("%s", line, extra={"request_id": request_id})

    def _serve(self, connection: aiosqlite.Connection, request_id: str | None = None) -> aiosqlite.Connection:
        if self._echo_sql:
            self._serving[id(connection)] = request_id or REQUEST_ID.get()
        return connection

    def _prepare_writer(self, connection: sqlite3.Connection) -> bytes:
        """WAL, durability, who checkpoints (``_checkpoints_apart``), statement journals in
        memory, the schema; returns the secret that signs page cursors.

        Inside a transaction, each statement that may have to be undone alone (any that
        fires a trigger: every write here) keeps a statement journal of the pages it
        changes, and SQLite moves one that grows past 64 KiB into a file in /var/tmp. A
        batch of creates did, at about 20 pwrite() calls per create. Nothing durable is in
        it: it only undoes a statement, and is dropped at the end of the transaction.

        A database this refuses (another program's, a newer blog_api's) is refused before
        WAL, which stays with the file: the tutorial's blog.db, refused, was left in WAL mode."""
        if not self.in_memory:
            self._schema_version_of_ours(connection)
            connection.execute("PRAGMA journal_mode = WAL")
        connection.execute(self._synchronous_pragma)
        if self._checkpoints_apart:
            connection.execute("PRAGMA wal_autocheckpoint = 0")  # see _checkpoint_soon
        connection.execute("PRAGMA temp_store = MEMORY")
        with self._writers_turn, write_transaction(connection):  # indexes what others wrote meanwhile
            self._apply_schema(connection)
        [(secret,)] = connection.execute(SELECT_CURSOR_SECRET).fetchall()
        return secret

    def _apply_schema(self, connection: sqlite3.Connection) -> None:
        """Apply schema.sql to a new database, upgrade an older one, accept a current one,
        refuse anything else."""
        version = self._schema_version_of_ours(connection)
        if version == SCHEMA_VERSION:
            return
        if version > 0:  # an older blog_api's database; a new one has nothing to upgrade
            for older in range(version, SCHEMA_VERSION):
                for statement in SCHEMA_UPGRADES.get(older, []):
                    connection.execute(statement)
        for statement in sql_statements(read_schema()):
            connection.execute(statement)

    def _schema_version_of_ours(self, connection: sqlite3.Connection) -> int:
        """The database's schema version; a DatabaseError for one newer than this blog_api
        knows, or for another program's database."""
        [(version,)] = connection.execute(SELECT_SCHEMA_VERSION).fetchall()
        if version > SCHEMA_VERSION:
            raise DatabaseError(
                f"the database {self.path!r} has schema version {version}, newer than this "
                f"blog_api {__version__} knows ({SCHEMA_VERSION}); run a newer blog_api"
            )
        if version == 0 and (tables := [name for (name,) in connection.execute(SELECT_USER_TABLES)]):
            raise DatabaseError(
                f"the database {self.path!r} holds tables ({', '.join(tables)}) but no blog_api "
                "schema version, so another program made it (the tutorial's SQLAlchemy app, "
                "perhaps); refusing to guess at its layout. Use --db to choose another file; "
                f"blog_api.py import {self.path} --db blog_api.db copies the tutorial's posts into a new one."
            )
        return version

    async def write(self, work: Work[T], *, together: Together | None = None, row: Any = None) -> T:
        """Run ``work`` on the writer connection inside a transaction, and return what it
        returned once that transaction has committed. If it raises, its statements are
        undone and the exception is raised here. A write whose caller gives up (is
        cancelled) before its transaction begins is never run.

        With ``together``, the writes of a batch that have the same one run in one call of
        it (each given as its ``row``) when there are two or more, and ``work`` runs only
        if that leaves this one undone."""
        if self._committer is None:
            raise DatabaseError("the database is not open for writing")
        if self._moved_file is not None:
            raise database_moved_error(self._moved_file)
        answer = asyncio.get_running_loop().create_future()
        self._writes.put_nowait(QueuedWrite(work, answer, REQUEST_ID.get(), together, row))
        return await answer

    async def _commit_queued_writes(self) -> None:
        """The single writer: each turn takes every write waiting into one transaction,
        until ``close()`` queues None.

        Once a write is waiting, the event loop first takes ``GATHER_TURNS`` turns. Under
        load, the clients that the last commit answered send their next writes within a few
        turns. Without the wait, each commit took only the writes that had come in while the
        one before ran, about half the clients, and its statements waited for the GIL behind
        the loop, which was answering the other half (in an A/B of wrk rounds at 32
        connections, batches went from 16 writes to 32, and POST and PUT from 2,138 and 2,963
        requests a second to 2,550 and 3,488). A client writing alone waits those few turns:
        microseconds, when nothing else is going on."""
        closing = False
        while not closing:
            batch: list[QueuedWrite] = []
            queued = await self._writes.get()
            for _ in range(GATHER_TURNS):
                await asyncio.sleep(0)
            while True:
                if queued is None:
                    closing = True
                    break
                if not queued.answer.cancelled():
                    batch.append(queued)
                if len(batch) >= MAX_WRITES_PER_COMMIT or self._writes.empty():
                    break
                queued = self._writes.get_nowait()
            if batch:
                await self._checkpoint_ended()
                await self._commit(batch)

    async def _commit(self, batch: list[QueuedWrite]) -> None:
        try:
            outcomes = await self._call(self._require_writer(), partial(self._run_batch, batch))
        except Exception as exc:
            outcomes = [(False, exc)] * len(batch)
        # Before any write is answered; and even after a failed batch, which may have committed.
        self._batches_committed += 1
        if (moved_file := await self.moved_file()) is not None:  # committed where no start looks: not acknowledged
            moved = database_moved_error(moved_file)
            outcomes = [(False, moved if succeeded else value) for succeeded, value in outcomes]
        else:
            self._checkpoint_soon()
        for queued, (succeeded, value) in zip(batch, outcomes, strict=True):
            if queued.answer.done():
                continue
            if succeeded:
                queued.answer.set_result(value)
            else:
                queued.answer.set_exception(value)

    def _checkpoint_soon(self) -> None:
        """After a commit, have the checkpointer copy the WAL's pages into the database file
        (a PASSIVE checkpoint, which does not hold up the readers), unless its last
        checkpoint is still running or began less than ``CHECKPOINT_INTERVAL_SECONDS`` ago.

        SQLite checkpoints in the connection that commits, once the WAL holds 1,000 pages:
        under POST load, every tenth batch or so, whose COMMIT then also wrote those pages
        into the database file and waited for its fsync (15 ms at the median, up to 21:
        strace), and the batch's clients waited with it. Here the writer does not
        (``wal_autocheckpoint`` 0): the checkpointer's fsync runs in its own thread while the
        event loop answers those clients and reads their next writes. In four A/Bs of wrk
        rounds, POST at 0.98 to 1.10 times the rate, PUT 1.03 to 1.07 (see the README's
        Throughput)."""
        if self._checkpointer is None or (self._checkpoint is not None and not self._checkpoint.done()):
            return
        now = time.monotonic()
        if now - self._last_checkpoint_began < CHECKPOINT_INTERVAL_SECONDS:
            return
        self._last_checkpoint_began = now
        self._checkpoint = asyncio.create_task(self._run_checkpoint(self._checkpointer))

    async def _run_checkpoint(self, checkpointer: aiosqlite.Connection) -> None:
        """A failed checkpoint loses nothing: the WAL keeps every commit, and the next commit
        tries again."""
        try:
            await checkpointer.execute_fetchall(CHECKPOINT_WAL)
        except sqlite3.Error as exc:
            logger.warning("could not copy the WAL of %r into the database file: %s", self.path, exc)

    async def _checkpoint_ended(self) -> None:
        """Wait for the checkpoint running, if any, without cancelling it when cancelled.

        The writer waits for it before each transaction: a checkpoint that copies every frame
        lets the next transaction write the WAL from its start again, and one that a writer
        appends to as it runs does not. Writing on (and with ``--workers`` the checkpoints
        apart), the WAL grew to 16 MB in 40 s of POSTs to one worker, and past 140 MB to two
        (5 MB before, 3 MB since). Waiting only once the WAL had passed 1,000 pages, it grew
        to 9 MB, and in an A/B of 8 wrk rounds POST and PUT ran at 0.98 of the rate of always
        waiting, POST's p99 142 ms against 69."""
        if self._checkpoint is not None and not self._checkpoint.done():
            await asyncio.wait([self._checkpoint])

    async def moved_file(self) -> str | None:
        """The database file, its WAL or its shared index, whichever is no longer at the
        path the writer opened it by: moved (renamed, or its folder renamed), replaced
        (another file renamed over it) or deleted (``rm blog.db``, ``rm blog.db-wal``);
        None while none is. SQLite does not notice, in WAL mode: it goes on committing to
        the files it has open, where no start will look, and writes acknowledged so were
        lost at the next start. Asked after each commit, on the event loop (three stats, a
        few microseconds, per batch), by /health and at shutdown. Where it is first seen, the
        WAL is emptied into the database file (``_empty_wal_into_moved_file``); from then
        on, every write is refused (503) until blog_api restarts on the files now there."""
        if self._moved_file is None:
            self._moved_file = next(
                (path for path, identity in self._file_identities.items() if file_identity(path) != identity), None
            )
            if self._moved_file is not None:
                logger.error("%s; writes are refused until then", database_moved_error(self._moved_file))
                if self._writer is not None:
                    await self._empty_wal_into_moved_file(self._writer)
        return self._moved_file

    async def _empty_wal_into_moved_file(self, writer: aiosqlite.Connection) -> None:
        """Checkpoint the WAL the writer has open into the database file it has open, moved
        or not, and empty it, as soon as a move is seen. Closing, SQLite
        leaves the WAL of a moved file where it was, beside the path: a file renamed there
        since took its pages for its own at the next start (a database that was neither),
        and a file renamed away lacked the writes acknowledged before. A WAL deleted holds
        the writes acknowledged since the last checkpoint, which a crash then lost."""
        await self._checkpoint_ended()
        try:
            [(busy, _, _)] = await writer.execute_fetchall("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            busy, reason = True, str(exc)
        else:
            reason = "the database stayed busy"
        if busy:
            logger.warning("could not empty the WAL of the moved database file %r: %s", self.path, reason)

    def _run_batch(self, batch: list[QueuedWrite], connection: sqlite3.Connection) -> list[tuple[bool, Any]]:
        """In the writer's thread: every write of the batch in one transaction, and the
        search index brought up to date with all of them just before its COMMIT.

        Writes seldom fail, so they first run one after another with nothing between them.
        If one raises, that transaction is rolled back and the batch runs again with each
        write in a savepoint, so that the failing one is undone alone. (A savepoint costs a
        write two more statements, and in this thread each statement means waiting for the
        GIL again, behind the event loop: under load, that wait is most of a write's time.)
        An error that ends the whole transaction (a full disk, a failed COMMIT) fails every
        write in it.

        With --echo-sql, what the writes share (BEGIN, the search index, COMMIT or ROLLBACK;
        a ``Together`` call) is logged under all their request IDs, so that each request's
        lines include the COMMIT that made it durable."""
        batch_ids = ",".join(queued.request_id for queued in batch) if self._echo_sql else None
        self._serve(self._require_writer(), batch_ids)
        with self._writers_turn:
            try:
                with write_transaction(connection):
                    return self._run_writes(batch, batch_ids, connection)
            except WriteFailed as failure:
                if len(batch) == 1:
                    return [(False, failure.error)]
            return self._run_batch_in_savepoints(batch, batch_ids, connection)

    def _run_writes(
        self, batch: list[QueuedWrite], batch_ids: str | None, connection: sqlite3.Connection
    ) -> list[tuple[bool, Any]]:
        """Every write of the batch, with nothing between them: first those that share a
        ``Together``, in one call of it (its SQL logged under their request IDs), then each
        of the others alone, in order."""
        kinds: dict[Together, list[int]] = {}
        for index, queued in enumerate(batch):
            if queued.together is not None:
                kinds.setdefault(queued.together, []).append(index)
        done: dict[int, Any] = {}
        for together, indexes in kinds.items():
            if len(indexes) > 1:
                if self._echo_sql:
                    self._serve(self._require_writer(), ",".join(batch[index].request_id for index in indexes))
                try:
                    results = together(connection, [batch[index].row for index in indexes])
                except Exception as exc:
                    raise WriteFailed(exc) from exc
                finally:
                    self._serve(self._require_writer(), batch_ids)
                for index, result in zip(indexes, results, strict=True):
                    if result is not None:
                        done[index] = result
        return [
            (True, done[index] if index in done else self._run_write(queued, batch_ids, connection))
            for index, queued in enumerate(batch)
        ]

    def _run_write(self, queued: QueuedWrite, batch_ids: str | None, connection: sqlite3.Connection) -> Any:
        self._serve(self._require_writer(), queued.request_id)
        try:
            return queued.work(connection)
        except Exception as exc:
            raise WriteFailed(exc) from exc
        finally:
            self._serve(self._require_writer(), batch_ids)

    def _run_batch_in_savepoints(
        self, batch: list[QueuedWrite], batch_ids: str | None, connection: sqlite3.Connection
    ) -> list[tuple[bool, Any]]:
        outcomes: list[tuple[bool, Any]] = []
        with write_transaction(connection):
            for queued in batch:
                self._serve(self._require_writer(), queued.request_id)
                connection.execute("SAVEPOINT write")
                try:
                    outcomes.append((True, queued.work(connection)))
                except Exception as exc:
                    try:
                        connection.execute("ROLLBACK TO write")
                    except sqlite3.Error:
                        raise exc from None
                    outcomes.append((False, exc))
                connection.execute("RELEASE write")
            self._serve(self._require_writer(), batch_ids)
        return outcomes

    async def read(self, work: Work[T]) -> T:
        """Run ``work`` on an idle reader connection (it may only read)."""
        if self.in_memory:
            return await self._call(self._serve(self._require_writer()), work)
        reader = await self._idle_readers.get()
        try:
            return await self._call(self._serve(reader), work)
        finally:
            self._idle_readers.put_nowait(reader)

    async def fetch_all(self, sql: str, parameters: Sequence[Any] | Mapping[str, Any] = ()) -> list[Any]:
        """Run one read-only statement on an idle reader and return its rows."""
        return await self.read(partial(fetch_rows, sql, parameters))

    async def fetch_one(self, sql: str, parameters: Sequence[Any] | Mapping[str, Any] = ()) -> Any | None:
        rows = await self.fetch_all(sql, parameters)
        return rows[0] if rows else None

    def _require_writer(self) -> aiosqlite.Connection:
        if self._writer is None:
            raise DatabaseError("the database is not open")
        return self._writer


K = TypeVar("K", bound=Hashable)


class BoundedStore(Generic[K, T]):
    """Values by key, within ``max_bytes`` counted at the size each was kept with: the oldest
    go first, and one bigger than ``max_bytes // largest_share`` is not kept."""

    def __init__(self, max_bytes: int, largest_share: int) -> None:
        self._max_bytes = max_bytes
        self._largest = max_bytes // largest_share
        self._values: dict[K, tuple[T, int]] = {}
        self._bytes = 0

    def _get(self, key: K) -> T | None:
        kept = self._values.get(key)
        return None if kept is None else kept[0]

    def _put(self, key: K, value: T, size: int) -> None:
        if size > self._largest:
            return
        if (replaced := self._values.pop(key, None)) is not None:
            self._bytes -= replaced[1]
        while self._values and self._bytes + size > self._max_bytes:
            oldest = next(iter(self._values))
            self._bytes -= self._values.pop(oldest)[1]
        self._values[key] = (value, size)
        self._bytes += size

    def _clear(self) -> None:
        self._values.clear()
        self._bytes = 0


READ_CACHE_BYTES = 8 * 1024 * 1024
"""How much each ``ReadCache`` (posts, pages) keeps at most, counted as ``size_of`` says."""


class ReadCache(BoundedStore[K, T]):
    """What was read, kept until the database changes, so that reading it again costs no
    hop and no SQL: a blog is read far more often than it is written.

    Every use first asks the database's data version (``Database.data_version``): if
    anything has been committed since, by this process or another (``--workers``), the
    cache is emptied. A value is kept only if the version did not move while it was read,
    so it is never older than the version it is kept under. Within ``max_bytes``, the
    oldest values go first; a value bigger than a sixteenth of it is not kept.
    """

    def __init__(
        self, data_version: Callable[[], int | None], size_of: Callable[[T], int], max_bytes: int = READ_CACHE_BYTES
    ) -> None:
        super().__init__(max_bytes, largest_share=16)
        self._data_version = data_version
        self._size_of = size_of
        self._version: int | None = None

    def version(self) -> int | None:
        """The data version now, having emptied the cache if it moved (None: unknown)."""
        version = self._data_version()
        if version != self._version:
            self._clear()
            self._version = version
        return version

    def get(self, key: K) -> T | None:
        """The value kept for ``key``, if the database has not changed since it was read."""
        self.version()
        return self._get(key)

    def keep(self, read_at: int | None, values: Mapping[K, T]) -> None:
        """Keep ``values``, read after the data version ``read_at`` was seen, if it is still current."""
        if read_at is None or self.version() != read_at:
            return
        for key, value in values.items():
            self._put(key, value, self._size_of(value))


LISTINGS_KEPT_BYTES = 1024 * 1024
LISTING_BYTES = 640
"""What a kept listing of a short query takes with its key (tracemalloc: ~530 bytes for the
Listing); its query string counts twice more, as the key and in the listing's Link parameters."""


class ListingMemo(BoundedStore[tuple[bytes, bool], Listing]):
    """The Listing each query string made, for callers who may see drafts and for those who
    may not: a blog's pages are asked for with the same few queries over and over, and
    checking one again (``listing_from_query``) took 12.6% of the instructions of a page of 20
    from the read cache (callgrind, on the whole server). A listing depends on nothing else
    while the app runs (the cursor secret is the database's). Only a query that was taken is
    kept: a refused one is checked, and refused, every time."""

    def __init__(self) -> None:
        super().__init__(LISTINGS_KEPT_BYTES, largest_share=16)

    def get(self, query_string: bytes, drafts_visible: bool) -> Listing | None:
        return self._get((query_string, drafts_visible))

    def keep(self, query_string: bytes, drafts_visible: bool, listing: Listing) -> None:
        self._put((query_string, drafts_visible), listing, LISTING_BYTES + 2 * len(query_string))


class Coalescer(Generic[K, T]):
    """Lookups by key that arrive together are answered by one call (the DataLoader
    pattern): every key asked for in the same turn of the event loop waits for the next
    turn, when one ``fetch_many(keys)`` (one hop) answers them all, and a key asked for
    twice is looked up once. At most ``max_in_flight`` calls run at once; keys asked for
    meanwhile wait for the next, which takes them all, so batches grow with the load.

    A key never joins a call already under way, which may have begun before a write
    that its caller has seen acknowledged: every answer is at least as new as its question.

    With a ``cache``, a key whose value is kept there is answered at once, and what each
    call finds is kept.
    """

    def __init__(
        self,
        fetch_many: Callable[[list[K]], Awaitable[Mapping[K, T]]],
        max_in_flight: int,
        cache: ReadCache[K, T] | None = None,
    ) -> None:
        self._fetch_many = fetch_many
        self._max_in_flight = max_in_flight
        self._cache = cache
        self._in_flight = 0
        self._waiting: dict[K, list[asyncio.Future[T | None]]] = {}
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def load(self, key: K) -> T | None:
        """The value for ``key``, or None if there is none."""
        if self._cache is not None and (kept := self._cache.get(key)) is not None:
            return kept
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[T | None] = loop.create_future()
        self._waiting.setdefault(key, []).append(answer)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._dispatch)
        return await answer

    def _dispatch(self) -> None:
        self._scheduled = False
        if not self._waiting or self._in_flight >= self._max_in_flight:
            return
        batch, self._waiting = self._waiting, {}
        self._in_flight += 1
        read_at = None if self._cache is None else self._cache.version()
        task = asyncio.create_task(self._answer(batch, read_at))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, batch: dict[K, list[asyncio.Future[T | None]]], read_at: int | None) -> None:
        try:
            found = await self._fetch_many(list(batch))
        except BaseException as exc:
            for answers in batch.values():
                for answer in answers:
                    if not answer.done():
                        answer.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            if self._cache is not None:
                self._cache.keep(read_at, found)
            for key, answers in batch.items():
                for answer in answers:
                    if not answer.done():
                        answer.set_result(found.get(key))
        finally:
            self._in_flight -= 1
            if self._waiting and not self._scheduled:
                self._dispatch()


# Result codes that mean "the database cannot serve now", not "blog_api has a bug": primary
# ones, and an extended one that says more than its primary (SQLITE_READONLY).
UNAVAILABLE_ERROR_CODES = {
    sqlite3.SQLITE_BUSY: "The database is busy; try again shortly",
    sqlite3.SQLITE_LOCKED: "The database is busy; try again shortly",
    sqlite3.SQLITE_FULL: "The database's disk is full",
    sqlite3.SQLITE_IOERR: "The database's disk failed to read or write",
    sqlite3.SQLITE_READONLY: "The database is read-only",
    sqlite3.SQLITE_CANTOPEN: "The database file cannot be opened",
    sqlite3.SQLITE_READONLY_DBMOVED: "The database file was moved, replaced or deleted while the server ran: "
    "it must restart",
}


# --------------------------------------------------------------------------------------
# Logs and request IDs
# --------------------------------------------------------------------------------------

logger = logging.getLogger("blog_api")
access_logger = logging.getLogger("blog_api.access")
sql_logger = logging.getLogger("blog_api.sql")

REQUEST_ID: ContextVar[str] = ContextVar("request_id", default="-")
"""The ID of the request being served, for every log line written while serving it."""
REQUEST_ID_SHAPE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def escape_for_log(text: str) -> str:
    """``text`` as a log line may show it: a client's control characters escaped (``\\n``,
    ``\\x1b``), so that a path cannot start a forged line or drive a terminal."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else char.encode("unicode_escape").decode("ascii") for char in text)


def request_id_for(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's X-Request-ID if it is a sane token (letters, digits, ``._:-``, at most 64),
    else a new one: anything else could forge or garble log lines. A new one is 128 random
    bits from ``random``: IDs need to be unique, not secret, and ``secrets`` costs a system
    call per request."""
    for name, value in headers:
        if name.lower() == b"x-request-id":
            candidate = value.decode("latin-1")
            if REQUEST_ID_SHAPE.match(candidate):
                return candidate
    return f"{random.getrandbits(128):032x}"


LIST_FIELDS = frozenset({b"if-match", b"if-none-match", b"content-encoding", b"accept-encoding"})
"""The list-based fields (RFC 9110 5.6.1) that blog_api or Litestar reads: both read a field
with one ``get``, which sees its first field line alone."""


def combined_field_lines(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The request's headers with the lines of each list-based field made one, their values
    joined by commas in the order sent: to a recipient that is the same field (RFC 9110 5.3),
    and a second ``If-None-Match`` line must count as much as the first. Usually no such
    field is repeated, and the same list comes back."""
    listed = [name.lower() for name, _ in headers if name.lower() in LIST_FIELDS]
    if len(listed) == len(set(listed)):
        return headers
    others: list[tuple[bytes, bytes]] = []
    values: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        if name.lower() in LIST_FIELDS:
            values.setdefault(name.lower(), []).append(value)
        else:
            others.append((name, value))
    return others + [(name, b", ".join(value for value in lines if value.strip())) for name, lines in values.items()]


def headers_as_read(headers: list[tuple[bytes, bytes]]) -> tuple[list[tuple[bytes, bytes]], Sequence[bytes]]:
    """The request's headers as blog_api and Litestar read them (``combined_field_lines``,
    then ``without_codings``), and the coded ETags the client named. Most requests have no
    list-based field: one pass finds that, and the same list comes back."""
    listed = [name.lower() for name, _ in headers if name.lower() in LIST_FIELDS]
    if not listed:
        return headers, ()
    headers = combined_field_lines(headers)
    if CONDITIONAL_FIELDS.isdisjoint(listed):
        return headers, ()
    return without_codings(headers)


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, and the access
    fields (method, path, status, duration_ms) on access lines."""

    FIELDS = ("method", "path", "status", "duration_ms")

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", REQUEST_ID.get()),
        }
        line.update((name, getattr(record, name)) for name in self.FIELDS if hasattr(record, name))
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return msgspec.json.encode(line).decode()


def write_access_lines_directly(blog: "BlogAPI") -> None:
    """The service's own processes write their text access lines straight to stderr
    (``BlogAPI.access_line_stream``), where the logging handler would write them."""
    if blog.state.config.log_format == "text":
        blog.access_line_stream = sys.stderr


def skip_unused_log_record_fields() -> None:
    """Stop gathering, for every log record, what no line of ours shows: thread, process and
    task names, the process ID (a system call each time) and the caller's source line. These
    are the switches of the logging HOWTO's "Optimization" section; they cost the access line
    ~45 µs a request under load. Process-wide, so only for the service's own processes
    (``python blog_api.py``), never for an app embedded elsewhere."""
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging.logAsyncioTasks = False  # Python 3.12 and newer
    logging._srcfile = None


TEXT_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
ACCESS_MESSAGE = "%s %s %s %.2fms"  # method, path, status, milliseconds


class TextFormatter(logging.Formatter):
    """``TEXT_LOG_FORMAT``, with the date and time of each second made once: logging's own
    ``formatTime`` converts and formats them for every line, a good part of what an access
    line costs under load. The lines are the same."""

    def __init__(self) -> None:
        super().__init__(TEXT_LOG_FORMAT)
        self._second_and_text: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        return self.asctime(record.created, record.msecs)

    def asctime(self, created: float, msecs: float) -> str:
        second, text = self._second_and_text
        if int(created) != second:
            second = int(created)
            text = time.strftime(self.default_time_format, self.converter(second))
            self._second_and_text = (second, text)
        return self.default_msec_format % (text, msecs)

    def access_line(
        self, created: float, level: int, request_id: str, method: str, path: str, status: int, duration_ms: float
    ) -> str:
        """The line this formatter makes of an access record, made without the record
        (``BlogAPI.access_line_stream``)."""
        fields = {
            "asctime": self.asctime(created, int((created - int(created)) * 1000)),  # LogRecord's msecs
            "levelname": logging.getLevelName(level),
            "name": access_logger.name,
            "request_id": request_id,
            "message": ACCESS_MESSAGE % (method, path, status, duration_ms),
        }
        return TEXT_LOG_FORMAT % fields


def logging_config(config: "Config") -> LoggingConfig:
    """Our loggers, and Litestar's, on stderr in the chosen format with request IDs."""
    formatter = {"()": JsonFormatter if config.log_format == "json" else TextFormatter}
    level = config.log_level.upper()
    return LoggingConfig(
        formatters={"blog_api": formatter},
        filters={"request_id": {"()": RequestIdFilter}},
        handlers={
            "blog_api": {"class": "logging.StreamHandler", "formatter": "blog_api", "filters": ["request_id"]},
            # Litestar adds a "queue_listener" handler unless one is named, and its default starts
            # a thread that no logger of ours uses and nothing stops: one more per app created.
            "queue_listener": {"class": "logging.NullHandler"},
        },
        loggers={
            "blog_api": {"level": level, "handlers": ["blog_api"], "propagate": False},
            "litestar": {"level": level, "handlers": ["blog_api"], "propagate": False},
        },
        log_exceptions="never",
        configure_root_logger=False,
    )


def uvicorn_log_config(config: "Config") -> dict[str, Any] | None:
    """uvicorn's own lines (startup, shutdown) as JSON too, when logs are JSON."""
    if config.log_format != "json":
        return None
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"json": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "loggers": {"uvicorn": {"handlers": ["json"], "level": config.log_level.upper(), "propagate": False}},
    }


# --------------------------------------------------------------------------------------
# Security: who may write, who may see drafts
# --------------------------------------------------------------------------------------

EDITOR = "editor"
"""The user of a request that carries the right token: it may write and see drafts."""
BEARER_SCHEME = "BearerToken"


def unauthorized(detail: str, error: str | None = None) -> NotAuthorizedException:
    """401 with the challenge RFC 6750 asks for (never repeating what the client sent)."""
    challenge = 'Bearer realm="blog_api"' + (f', error="{error}"' if error else "")
    return NotAuthorizedException(detail=detail, headers={"WWW-Authenticate": challenge})


class BearerTokenMiddleware(AbstractAuthenticationMiddleware):
    """Recognises ``Authorization: Bearer <token>``, compared in constant time.

    No header: an anonymous reader. A wrong token, or another scheme: 401 on any route, so
    that a client learns at once that its credentials are wrong rather than seeing fewer posts.
    """

    def __init__(self, app: ASGIApp, token: str, exclude: str | None = None) -> None:
        super().__init__(app, exclude=exclude)
        self._token = token.encode()

    async def authenticate_request(self, connection: ASGIConnection) -> AuthenticationResult:
        header = connection.headers.get("authorization")
        if header is None:
            return AuthenticationResult(user=None, auth=None)
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() != "bearer":  # no bearer token at all: no error code (RFC 6750 3.1)
            raise unauthorized("Expected Authorization: Bearer <token>, the only scheme this server takes")
        if not hmac.compare_digest(credentials.strip().encode(), self._token):
            raise unauthorized("The bearer token is not valid", error="invalid_token")
        return AuthenticationResult(user=EDITOR, auth=None)


READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


async def refuse_writes_when_read_only(request: Request) -> None:
    """The check on comments, which anyone may write: with --read-only, 405 (only GET and
    HEAD are allowed).

    The write checks run as ``before_request`` hooks, before the body is read, rather than as
    guards: Litestar copies the whole route handler for every guard it runs, which was ~8%
    of the event loop's time on a POST."""
    if request.app.state.config.read_only:
        raise MethodNotAllowedException(
            detail="This server is read-only (--read-only): it takes no writes",
            headers={"Allow": ", ".join(sorted(READ_METHODS))},
        )


async def require_writer(request: Request) -> None:
    """The check on every other write. With a token: only its holders. Without one: anyone
    on this machine, or anyone at all with --allow-anonymous-writes.
    With --read-only, nobody (405)."""
    await refuse_writes_when_read_only(request)
    config: Config = request.app.state.config
    if config.token is not None:
        if request.scope.get("user") != EDITOR:
            raise unauthorized("Writing needs Authorization: Bearer <token>")
    elif not config.allow_anonymous_writes and not arrived_on_loopback(request):
        raise PermissionDeniedException(
            detail="This server takes anonymous writes only from its own machine; start it with --token"
        )


def arrived_on_loopback(connection: ASGIConnection) -> bool:
    """Whether the request came from this machine: in on a loopback address of this server,
    from a loopback address. The client is the one a proxy on this machine names in
    ``X-Forwarded-For`` (uvicorn takes it from proxies on 127.0.0.1), so that nginx in front
    of ``python blog_api.py`` does not pass anonymous writes on from the whole internet. A
    Unix socket, or a test client with a made-up host name, counts as local."""
    server, client = connection.scope.get("server"), connection.scope.get("client")
    return (not server or is_loopback_address(server[0])) and (not client or is_loopback_address(client[0]))


def misdirected_host(scope: Scope) -> str | None:
    """Why a request on a loopback socket is refused for the name it asks for, or None.

    Without a token, blog_api takes anyone on this machine for its editor: a web page from
    elsewhere must not reach it. Browsers keep pages off other sites' servers, but a name
    of the page's own site that its DNS then points here (DNS rebinding) makes this server
    the page's own: it could read the drafts and write. So on a loopback socket, a request
    must name this machine (``localhost``, a ``.localhost`` name, a loopback address), as
    Vite's and Jupyter's servers ask. A test client or a Unix socket is not checked."""
    server = scope.get("server")
    if not server or not is_loopback_ip(server[0]):
        return None
    host = next((value for name, value in scope["headers"] if name == b"host"), b"")
    if not host or names_this_machine(host):  # none, or empty: no browser's request
        return None
    return (
        "Without a token, this server answers only requests for this machine (localhost, 127.0.0.1): "
        f"Host {host.decode('latin-1')} names another, and a web page could reach this server by such a name "
        "(DNS rebinding). Ask for localhost, or serve with --token"
    )


def ip_address_of(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``host`` as an IP address, or None for a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


@lru_cache(maxsize=256)
def is_loopback_ip(host: str) -> bool:
    """Whether ``host`` is a loopback IP address (a name is not). Each address a server
    listens on is parsed once, not on every request."""
    address = ip_address_of(host)
    return address is not None and address.is_loopback


@lru_cache(maxsize=256)
def is_loopback_address(host: str) -> bool:
    """Whether ``host`` is a loopback address, where a name that is not an address counts as
    local (a test client's, a Unix socket's path). Each address a server listens on, or its
    clients write from, is parsed once, not on every write."""
    address = ip_address_of(host)
    return address is None or address.is_loopback


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (a name or an address, as --host takes it) is this machine's alone."""
    return host == "localhost" or is_loopback_ip(host)


@lru_cache(maxsize=256)
def names_this_machine(host_field: bytes) -> bool:
    """Whether a Host field names this machine: ``localhost`` or a name under it (RFC 6761
    6.3: always loopback), or a loopback address, with any port."""
    host = host_field.decode("latin-1").lower()
    name = host[1 : host.find("]")] if host.startswith("[") else host.rpartition(":")[0] or host
    name = name.rstrip(".")
    return is_loopback_host(name) or name.endswith(".localhost")


SAME_SITE_FETCHES = (b"same-origin", b"none")
"""What ``Sec-Fetch-Site`` says of a request the page's own site, or the user, made."""


def cross_origin_refusal(headers: list[tuple[bytes, bytes]], trusted_origins: Collection[str]) -> str | None:
    """Why a write is refused as one a browser sends from a page on another site, or None.

    A POST whose body is not ``application/json`` is sent cross-site without a CORS
    preflight, and blog_api reads any body as JSON: so any page the user visited could write
    to a blog_api on their machine (which, without a token, takes writes from it). As Go's
    ``net/http.CrossOriginProtection`` judges it: ``Sec-Fetch-Site`` where browsers send it
    (all since 2023), else ``Origin`` against ``Host``; a request with neither (curl, scripts)
    is no browser's, and an origin allowed by ``--cors-origin`` is trusted."""
    fetch_site = origin = host = None
    for name, value in headers:
        if name == b"sec-fetch-site":
            fetch_site = value
        elif name == b"origin":
            origin = value
        elif name == b"host":
            host = value
    if fetch_site in SAME_SITE_FETCHES:
        return None
    if fetch_site is None and (origin is None or origin.partition(b"://")[2].lower() == (host or b"").lower()):
        return None
    page = origin.decode("latin-1") if origin is not None else None
    if page in trusted_origins or ANY_ORIGIN in trusted_origins:
        return None
    return (
        f"A write from a browser page on another site ({page or 'its origin unsaid'}) is refused: any page "
        "a user visits could send one. Allow a site's pages to write with --cors-origin"
    )


def drafts_visible(request: Request) -> bool:
    """Whether this caller may see unpublished posts: everyone without a token, else editors."""
    return request.app.state.config.token is None or request.scope.get("user") == EDITOR


def too_many_requests(request: Request, exc: TooManyRequestsException) -> Response:
    """Litestar's 429, with the ``Retry-After`` that RFC 9110 clients look for."""
    headers = dict(exc.headers or {})
    headers["Retry-After"] = str(max(1, int(headers.get("RateLimit-Reset", "1"))))
    detail = "Too many writes from this client; try again after Retry-After seconds"
    return Response({"status_code": 429, "detail": detail}, status_code=429, headers=headers)


def is_write(request: Request) -> bool:
    return request.method in ("POST", "PUT", "PATCH", "DELETE")


def rate_limited_client(request: Request) -> str:
    """Whom a write counts against for ``--rate-limit``: its client's address, or an IPv6
    client's /64 network. A subscriber's network is a /64 at the least, and a client may write
    from any address in it: counted one address at a time, it was never limited at all."""
    host = request.client.host if request.client else "127.0.0.1"  # as Litestar counts one without
    try:
        address = ipaddress.ip_address(host)
    except ValueError:  # a test client's made-up name
        return host
    if not isinstance(address, ipaddress.IPv6Address):
        return host
    if address.ipv4_mapped is not None:  # an IPv4 client on an IPv6 socket
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((address, 64), strict=False))


@asynccontextmanager
async def forgetting_past_writers(app: Litestar) -> AsyncIterator[None]:
    """Every ``RATE_LIMIT_SWEEP_SECONDS``, forget the clients whose rate-limit window has
    passed. Litestar's MemoryStore drops a client's count only when the client writes again,
    and asks to be swept (``delete_expired``): every address that ever wrote stayed in memory,
    38 MB for 100,000 of them."""
    store = app.stores.get(RATE_LIMIT_STORE)

    async def sweep() -> None:
        while True:
            await asyncio.sleep(RATE_LIMIT_SWEEP_SECONDS)
            await store.delete_expired()

    sweeping = asyncio.create_task(sweep())
    try:
        yield
    finally:
        sweeping.cancel()
        with suppress(asyncio.CancelledError):
            await sweeping


def cors_preflight_refusal(cors: CORSConfig, headers: Headers) -> str | None:
    """What a CORS preflight asks that ``cors`` does not allow, as Litestar's CORS middleware
    judges it, in words for the browser code's developer (Litestar says ``Disallowed CORS
    headers``, in plain text); None if it allows all, or the request has no Origin."""
    if (origin := headers.get("origin")) is None:
        return None
    refused = []
    if not cors.is_origin_allowed(origin):
        named = f"the origin {origin}" if origin else "an empty Origin"
        refused.append(f"{named} may not call this API from a browser (see --cors-origin)")
    method = headers.get("access-control-request-method")
    if method and not cors.is_allow_all_methods and method not in cors.allow_methods:
        refused.append(f"the method {method} is not one this API allows (it allows {', '.join(cors.allow_methods)})")
    allowed = {*cors.allow_headers, *(name.lower() for name in DEFAULT_ALLOWED_CORS_HEADERS)}
    asked = [name.strip() for name in headers.get("access-control-request-headers", "").split(",") if name.strip()]
    if not cors.is_allow_all_headers and (others := [name for name in asked if name.lower() not in allowed]):
        refused.append(
            f"the headers {', '.join(others)} are not ones this API allows (it allows {', '.join(sorted(allowed))})"
        )
    return f"CORS preflight refused: {'; '.join(refused)}" if refused else None


# --------------------------------------------------------------------------------------
# HTTP caching, conditional requests and safe retries
# --------------------------------------------------------------------------------------

ENTITY_TAG = re.compile(r'(W/)?("[^"]*")')
IDEMPOTENCY_KEY_LIFETIME_US = 24 * 60 * 60 * 1_000_000
NOT_MODIFIED = ResponseSpec(None, description="Not Modified: the client's copy (its ETag) is current.")


def entity_tags(field_value: str) -> list[tuple[bool, str]]:
    """The entity tags of an If-Match or If-None-Match field, as (weak, tag) pairs."""
    return [(bool(weak), tag) for weak, tag in ENTITY_TAG.findall(field_value)]


def post_etag(post_id: str, version: int) -> str:
    """Strong: the version changes whenever anything GET shows of the post changes."""
    return f'"{post_id}.{version}"'


def created_post_etag(post_id: str) -> str:
    """A new post's: every post starts at version 1."""
    return post_etag(post_id, 1)


def comment_etag(comment_id: str) -> str:
    """Strong: a comment never changes, so its ID will do."""
    return f'"{comment_id}"'


def post_id_and_version(etag: str) -> tuple[str, int]:
    """The post ID and the version a ``post_etag`` names."""
    post_id, _, version = etag.strip('"').rpartition(".")
    return post_id, int(version)


def page_etag(body: bytes, headers: Mapping[str, str]) -> str:
    """Strong, over everything a page answers: its posts, its total and its links."""
    digest = hashlib.sha256(body)
    digest.update(f"{headers.get('X-Total-Count')}|{headers.get('Link')}".encode())
    return f'"{digest.hexdigest()[:32]}"'


def http_date(microseconds: int) -> str:
    """RFC 9110 5.6.7's IMF-fixdate (``Mon, 01 Jan 2024 00:00:00 GMT``), to the second."""
    return format_date_time(microseconds // 1_000_000)


def is_not_modified(if_none_match: str | None, if_modified_since: str | None, etag: str, modified_us: int) -> bool:
    """RFC 9110 13.1.2 and 13.1.3: If-None-Match decides (weak comparison, ``*`` matches);
    only without it, If-Modified-Since, to the second. A date later than now is ignored, as
    invalid (RFC 2616 14.25; Apache ignores it too): from a client whose clock is ahead of
    ours, it would have every change made until then answered 304."""
    if if_none_match is not None:
        return matches_weakly(if_none_match, etag)
    since = parse_http_date(if_modified_since)
    return since is not None and to_the_second(modified_us) <= since <= to_the_second(utc_now_us())


def matches_weakly(field_value: str, etag: str) -> bool:
    """If-None-Match's comparison (RFC 9110 8.8.3.2): ``*``, or the same tag, ``W/`` or not."""
    return is_any(field_value) or any(tag == etag for _, tag in entity_tags(field_value))


def matches_strongly(field_value: str, etag: str) -> bool:
    """If-Match's comparison: ``*``, or the same tag, and neither weak."""
    return is_any(field_value) or (False, etag) in entity_tags(field_value)


CONTENT_CODINGS = ("br", "gzip")
"""The codings a response may be compressed with, in our order of preference."""
ACCEPTED_CODING = re.compile(r"\s*([a-z0-9!#$%&'*+.^_`|~-]+)\s*(?:;\s*q=(0(?:\.\d{0,3})?|1(?:\.0{0,3})?))?\s*")
"""One element of Accept-Encoding (RFC 9110 12.5.3), lowercased: a coding and its qvalue."""
MAX_ACCEPTED_CODINGS = 32


@lru_cache(maxsize=64)
def preferred_coding(accept_encoding: str) -> str | None:
    """The coding to compress a response with: of ``CONTENT_CODINGS``, the one that
    Accept-Encoding rates highest (``*`` rates those it does not name; ``x-gzip`` is gzip), the
    first on a tie; None if it rates none above 0 (RFC 9110 12.5.3: q=0 is "not acceptable"),
    or rates identity higher. Litestar's own choice looks for the names in the field, so it
    sent br to ``br;q=0``. An element that is not a coding with a valid qvalue is ignored,
    and so is every element after the first ``MAX_ACCEPTED_CODINGS``: clients name a handful,
    and a 64 KiB field of them took 11 ms to read. Clients send few distinct fields: each is
    read once."""
    rated: dict[str, float] = {}
    for element in accept_encoding.lower().split(",", MAX_ACCEPTED_CODINGS)[:MAX_ACCEPTED_CODINGS]:
        if accepted := ACCEPTED_CODING.fullmatch(element):
            coding, qvalue = accepted.groups()
            rated.setdefault("gzip" if coding == "x-gzip" else coding, 1.0 if qvalue is None else float(qvalue))
    anything = rated.get("*", 0.0)
    best = max(CONTENT_CODINGS, key=lambda coding: rated.get(coding, anything))
    best_rating = rated.get(best, anything)
    return best if best_rating > 0 and best_rating >= rated.get("identity", 0.0) else None


OFF_LOOP_COMPRESSION_BYTES = 64 * 1024
"""A body this long or longer is compressed in a worker thread, not on the event loop, where
every other request waited for it: a page of 100 long posts (9.8 MB) took 0.5 s to compress,
and one client asking for it again and again made a GET of one post take up to 650 ms. (brotli
and zlib let go of the GIL while they work.) Below it, compressing takes a few milliseconds
at most, less than the hop to a thread would save."""


CODED_BODIES_BYTES = 8 * 1024 * 1024
"""How much ``CodedBodies`` keeps at most: bodies and their compressed forms, counted together."""


class CodedBodies(BoundedStore[tuple[bytes, str], bytes]):
    """Bodies compressed before, by body and coding, so that an answer sent again (a page, a
    long post: from the read cache, the same bytes each time) is not compressed again.

    Compressing a page of 20 posts (10 KB) in brotli takes 0.34 ms, twice what the rest of
    answering it from the read cache costs the event loop: with ``Accept-Encoding: br``, as
    browsers send it, wrk got 1,860 pages a second where it got 7,140 without. Keyed by the
    body itself, what is found is exactly what compressing would make: a dict finds the very
    bytes object the read cache holds by identity, and hashes a new one once. Within
    ``max_bytes``, the oldest go first; a body and its coding over a quarter of it are not kept.
    """

    def __init__(self, max_bytes: int = CODED_BODIES_BYTES) -> None:
        super().__init__(max_bytes, largest_share=4)

    def get(self, body: bytes, coding: str) -> bytes | None:
        return self._get((body, coding))

    def keep(self, body: bytes, coding: str, coded: bytes) -> None:
        self._put((body, coding), coded, len(body) + len(coded))


class NegotiatedCompression(CompressionMiddleware):
    """Litestar's compression, in the coding that ``preferred_coding`` picks, of a whole body
    once (``CodedBodies``), and of a long one off the event loop (``OFF_LOOP_COMPRESSION_BYTES``)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Read from the scope's list (the field is one line: ``combined_field_lines``), not
        # from a Headers made of it: see ``create_compression_send_wrapper``.
        accept_encoding = next((value for name, value in scope["headers"] if name == b"accept-encoding"), None)
        if accept_encoding and (coding := preferred_coding(accept_encoding.decode("latin-1"))):
            send = self.create_compression_send_wrapper(send=send, compression_encoding=coding, scope=scope)
        await self.app(scope, receive, send)

    def create_compression_send_wrapper(self, send: Send, compression_encoding: str, scope: Scope) -> Send:
        """Litestar's wrapper, but a whole body (every answer of the API is one) is compressed
        by ``coded``, and one under Litestar's ``minimum_size`` is sent as it is. Litestar's,
        for a body in parts, is made only when it is used: it opens a compressor at once,
        which must be closed (Python 3.13 reports one left to the garbage collector). Its
        Vary is the app's to add (``with_coded_etag_and_vary``), as it does to every answer.

        Headers are read and written as the lists they are: Litestar's Headers and
        MutableScopeHeaders (a scan of the list per field set) took the server 191 µs of CPU
        per page of 20 in brotli, against 159 µs without them (medians of 6 wrk rounds each)."""
        in_parts: Send | None = None
        held_start: Message | None = None

        async def send_compressed(message: Message) -> None:
            nonlocal in_parts, held_start
            if message["type"] == "http.response.start":
                held_start = message
                return
            if held_start is not None:
                start, held_start = held_start, None
                if message["type"] == "http.response.body" and not message.get("more_body"):
                    body = message.get("body", b"")
                    if len(body) >= self.config.minimum_size:
                        coded = await self.coded(body, compression_encoding, scope["litestar_app"])
                        headers = [header for header in start["headers"] if header[0].lower() != b"content-length"]
                        headers += [
                            (b"content-encoding", compression_encoding.encode()),
                            (b"content-length", str(len(coded)).encode()),
                        ]
                        start = {**start, "headers": headers}
                        message = {**message, "body": coded}
                    await send(start)
                    await send(message)
                    return
                in_parts = super(NegotiatedCompression, self).create_compression_send_wrapper(
                    send, compression_encoding, scope
                )
                await in_parts(start)
            await (send if in_parts is None else in_parts)(message)

        return send_compressed

    async def coded(self, body: bytes, coding: str, app: "BlogAPI") -> bytes:
        """``body`` in ``coding``: as compressed before for the app, if it was, else now (in a
        thread if it is long)."""
        if (coded := app.coded_bodies.get(body, coding)) is not None:
            return coded
        if len(body) >= OFF_LOOP_COMPRESSION_BYTES:
            coded = await asyncio.to_thread(self.compressed, body, coding)
        else:
            coded = self.compressed(body, coding)
        app.coded_bodies.keep(body, coding, coded)
        return coded

    def compressed(self, body: bytes, coding: str) -> bytes:
        """``body`` in ``coding``, by Litestar's own compressors and settings."""
        buffer = BytesIO()
        facade_class = GzipCompression if coding == "gzip" else self.config.compression_facade
        facade = facade_class(buffer=buffer, compression_encoding=coding, config=self.config)
        facade.write(body)
        facade.close()
        return buffer.getvalue()


CONDITIONAL_FIELDS = frozenset({b"if-match", b"if-none-match"})
QUOTED_TAG = re.compile(rb'"[^"]*"')
CODED_TAG = re.compile(rb'-(?:br|gzip)"')
"""The end of the ETag of a compressed response: its coding, inside the quotes."""


def without_codings(headers: list[tuple[bytes, bytes]]) -> tuple[list[tuple[bytes, bytes]], list[bytes]]:
    """The request's headers with the coding taken off each ETag in If-Match and If-None-Match
    (``"ID.2-gzip"`` is version 2 of the post, compressed): the handlers compare the tags of
    the post, page or comment itself. Also the coded tags as the client sent them, for a 304
    to send back the one it holds (RFC 9110 15.4.5). Usually none has a coding, and the same
    list comes back."""
    for name, value in headers:
        if (b'-gzip"' in value or b'-br"' in value) and name.lower() in CONDITIONAL_FIELDS:
            break
    else:
        return headers, []
    coded: list[bytes] = []
    read: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        if name.lower() in CONDITIONAL_FIELDS:
            coded += [tag for tag in QUOTED_TAG.findall(value) if CODED_TAG.search(tag)]
            value = CODED_TAG.sub(b'"', value)
        read.append((name, value))
    return read, coded


VARIES_WITH = (b"Accept-Encoding",)
VARIES_WITH_ORIGIN = (b"Accept-Encoding", b"Origin")
"""With CORS on: Access-Control-Allow-Origin depends on Origin, so every answer says so (the
Fetch standard, "CORS protocol and HTTP caches"), those without it included: else a shared
cache could give the answer to a request without Origin to the blog's own browser code."""


def with_coded_etag_and_vary(
    headers: list[tuple[bytes, bytes]], status: int, coded_tags: Sequence[bytes], varies_with: Sequence[bytes]
) -> list[tuple[bytes, bytes]]:
    """The response's headers with its ETag made its representation's (RFC 9110 8.8.3.3): a
    compressed body is another representation, so its strong ETag gets the coding (``"ID.2"``
    becomes ``"ID.2-gzip"``). A 304 sends back the coded form of its ETag that the client
    named. And every response names ``varies_with`` in Vary (Accept-Encoding: compressed or
    not), where it does not already."""
    names = [name for name, _ in headers]
    if b"etag" in names:
        etag = names.index(b"etag")
        tag = headers[etag][1]
        if b"content-encoding" in names:
            coding = headers[names.index(b"content-encoding")][1]
            headers[etag] = (b"etag", tag[:-1] + b"-" + coding + b'"')
        elif status == HTTP_304_NOT_MODIFIED and coded_tags:
            named = [sent for sent in coded_tags if CODED_TAG.sub(b'"', sent) == tag]
            if named:
                headers[etag] = (b"etag", named[0])
    if b"vary" not in names:
        headers.append((b"vary", b", ".join(varies_with)))
        return headers
    named = {field.strip().lower() for name, value in headers if name == b"vary" for field in value.split(b",")}
    if missing := [field for field in varies_with if field.lower() not in named]:
        headers.append((b"vary", b", ".join(missing)))
    return headers


def to_the_second(microseconds: int) -> datetime:
    """A stored time as Last-Modified gives it, to the second, to compare with an HTTP date."""
    return EPOCH + timedelta(microseconds=microseconds - microseconds % 1_000_000)


def failed_read_precondition(
    if_match: str | None, if_unmodified_since: str | None, etag: str, modified_us: int
) -> PreconditionFailed | None:
    """RFC 9110 13.2.2's first two steps, which hold for a GET as for a write: If-Match
    (strong comparison, ``*`` matches), or only without it, If-Unmodified-Since, to the
    second. A 412 that fails one, else None."""
    if if_match is not None:
        if matches_strongly(if_match, etag):
            return None
        post_id, version = post_id_and_version(etag)
        return if_match_failed(versions_named(if_match, post_id, weak_too=False), version)
    since = parse_http_date(if_unmodified_since)
    if since is not None and to_the_second(modified_us) > since:
        return PreconditionFailed(detail=STALE_DATE)
    return None


def if_match_failed(versions: str, version: int) -> PreconditionFailed:
    """The 412 of an If-Match that the post, at ``version``, is at none of: stale, if it names
    earlier versions of the post (``versions``, from ``versions_named``); ahead, if it names
    only later ones; else it names none at all, which is most often an ETag sent without its
    quotes."""
    named = msgspec.json.decode(versions)
    if not named:
        return PreconditionFailed(detail=NOT_ITS_ETAG)
    if min(named) > version:
        return PreconditionFailed(detail=NOT_YET_AT_VERSION.format(version=version))
    return PreconditionFailed()


def failed_comment_precondition(
    if_match: str | None, if_none_match: str | None, etag: str
) -> CommentPreconditionFailed | None:
    """RFC 9110 13.2.2 for a comment's GET or DELETE. A comment never changes, so its ETag (its ID)
    alone decides: If-Match must name it (or be ``*``), If-None-Match must not (nor be ``*``).
    It has no Last-Modified, so If-Unmodified-Since does not apply."""
    if if_match is not None and not matches_strongly(if_match, etag):
        return CommentPreconditionFailed(detail=NOT_THE_COMMENTS_ETAG)
    if if_none_match is not None and matches_weakly(if_none_match, etag):
        return CommentPreconditionFailed(detail=UNWANTED_COMMENT_ETAG)
    return None


def parse_http_date(field_value: str | None) -> datetime | None:
    """An HTTP date (RFC 9110 5.6.7) as an aware datetime; None if absent or invalid, which
    RFC 9110 says to treat as if the field were not sent."""
    if field_value is None:
        return None
    try:
        since = email.utils.parsedate_to_datetime(field_value)
    except (TypeError, ValueError):
        return None
    return since if since.tzinfo is not None else since.replace(tzinfo=UTC)


def cache_control(request: Request, includes_drafts: bool) -> str:
    """Public content may be kept by any cache, which must revalidate it (with its ETag);
    anything with drafts in it, and any answer to an authenticated request, not at all."""
    if includes_drafts or "authorization" in request.headers:
        return "private, no-store"
    return "no-cache"


class EncodedJSONResponse(Response[bytes]):
    """A response whose body is JSON already encoded (by SQLite or msgspec): what every post
    and page is sent as.

    It sends them as they are. Litestar's own path merges headers through a case-blind
    multi-dict, one scan of the list per header, which cost GET one post ~25 µs of the event
    loop's ~190 (measured in-process). Anything else the route adds (its cookies, headers or
    background tasks, none of which our routes have) takes Litestar's path."""

    def to_asgi_response(self, app: Any, request: Request, **route: Any) -> ASGIResponse:
        if route.get("background") or route.get("cookies") or route.get("headers") or route.get("is_head_response"):
            return super().to_asgi_response(app, request, **route)
        status_code = self.status_code or route.get("status_code") or HTTP_200_OK
        return EncodedASGIResponse(self.content, status_code, self.headers)


class EncodedASGIResponse(ASGIResponse):
    """What ``EncodedJSONResponse`` sends: its headers encoded once, in a list."""

    __slots__ = ()

    def __init__(self, body: bytes, status_code: int, headers: Mapping[str, str]) -> None:
        encoded = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]
        if status_code in (HTTP_204_NO_CONTENT, HTTP_304_NOT_MODIFIED):
            body = b""
        else:
            encoded += ((b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()))
        self.headers = MutableScopeHeaders()
        self.headers.headers = encoded
        self.body = body
        self.content_length = len(body)
        self.status_code = status_code
        self.background = None
        self.encoding = "utf-8"
        self.is_head_response = False
        self._encoded_cookies = ()


def not_modified(headers: dict[str, str]) -> Response:
    return EncodedJSONResponse(b"", status_code=HTTP_304_NOT_MODIFIED, headers=headers)


def json_response(body: bytes, headers: dict[str, str], status_code: int = HTTP_200_OK) -> Response:
    return EncodedJSONResponse(body, status_code=status_code, media_type=MediaType.JSON, headers=headers)


def write_conditions(
    post_id: str, if_match: str | None, if_unmodified_since: str | None, if_none_match: str | None
) -> dict[str, Any]:
    """The preconditions of a write (RFC 9110 13.2.2) as the parameters of
    ``WRITE_CONDITIONS``, so that they are checked in the write's own transaction.
    If-Unmodified-Since counts only without If-Match; it holds if the post last changed
    within or before the second it names. If-None-Match compares weakly (13.1.2)."""
    since = None if if_match is not None else parse_http_date(if_unmodified_since)
    allowed = None if is_any(if_match) else versions_named(if_match, post_id, weak_too=False)
    unwanted = None if is_any(if_none_match) else versions_named(if_none_match, post_id, weak_too=True)
    return {
        "versions": allowed,
        "modified_before": None if since is None else (int(since.timestamp()) + 1) * 1_000_000,
        "unwanted_versions": unwanted,
        "unwanted_any": if_none_match is not None and is_any(if_none_match),
    }


def is_any(field_value: str | None) -> bool:
    """No If-Match or If-None-Match, or ``*``: it names no versions."""
    return field_value is None or field_value.strip() == "*"


def versions_named(field_value: str, post_id: str, *, weak_too: bool) -> str:
    """The versions of this post that an If-Match or If-None-Match names, as a JSON array
    for SQL. A weak tag counts only in a weak comparison (RFC 9110 8.8.3.2)."""
    versions = []
    for weak, tag in entity_tags(field_value):
        tag_post_id, _, version = tag.strip('"').rpartition(".")
        if (weak_too or not weak) and tag_post_id == post_id and version.isdigit():
            versions.append(int(version))
    return msgspec.json.encode(versions).decode()


def no_post_to_write(connection: sqlite3.Connection, post_id: str) -> NotFoundException:
    """The tutorial's 404, saying which post's slug ``post_id`` is if it is one: a GET takes
    the slug, a write to the post the ID only, as WordPress's do."""
    slug_of = connection.execute(SELECT_ID_BY_SLUG, (post_id,)).fetchall()
    if not slug_of:
        return post_not_found(post_id)
    [(slug_owner,)] = slug_of
    detail = f"Post with ID {post_id} not found: {post_id} is the slug of post {slug_owner}, and a write takes the ID"
    return NotFoundException(detail=detail)


def precondition_failed_or_missing(connection: sqlite3.Connection, write: Mapping[str, Any]) -> ClientException:
    """A conditional write (its parameters) that found nothing: 404 if the post is missing,
    else a 412 naming the precondition that failed."""
    found = connection.execute(SELECT_POST_STATE, {"id": write["id"]}).fetchall()
    if not found:
        return no_post_to_write(connection, write["id"])
    [(version, modified_at)] = found
    if write["versions"] is not None and version not in msgspec.json.decode(write["versions"]):
        return if_match_failed(write["versions"], version)
    if write["modified_before"] is not None and modified_at >= write["modified_before"]:
        return PreconditionFailed(detail=STALE_DATE)
    return PreconditionFailed(detail=UNWANTED_ETAG)


@dataclass(frozen=True)
class IdempotentRequest:
    """A POST with an Idempotency-Key: where, which key, and a digest of what it asked."""

    route: str
    key: str
    request_hash: str

    @classmethod
    def of(cls, request: Request, key: str | None, data: msgspec.Struct) -> "IdempotentRequest | None":
        if key is None:
            return None
        request_hash = hashlib.sha256(msgspec.json.encode(data)).hexdigest()
        return cls(route=f"{request.method} {request.url.path}", key=key, request_hash=request_hash)

    def replay(self, connection: sqlite3.Connection, etag_of: Callable[[str], str]) -> Response | None:
        """The response this key already got, or None; 422 if it came with another body. Its
        ETag is ``etag_of`` the ID at the end of its Location, as the first answer's was."""
        rows = connection.execute(SELECT_IDEMPOTENT_RESPONSE, {"route": self.route, "key": self.key}).fetchall()
        if not rows:
            return None
        request_hash, status, location, body = rows[0]
        if request_hash != self.request_hash:
            raise IdempotencyKeyReused()
        headers = {"Idempotent-Replayed": "true", "Location": location, "ETag": etag_of(location.rpartition("/")[2])}
        return json_response(body, headers, status_code=status)

    def remember(self, connection: sqlite3.Connection, status: int, location: str, body: bytes, now: int) -> None:
        """Store the response in the write's own transaction, so a crash keeps both or neither."""
        connection.execute(DELETE_EXPIRED_IDEMPOTENCY_KEYS, {"expired_before": now - IDEMPOTENCY_KEY_LIFETIME_US})
        parameters = {"route": self.route, "key": self.key, "request_hash": self.request_hash}
        parameters.update(status=status, location=location, body=body, now=now)
        connection.execute(INSERT_IDEMPOTENT_RESPONSE, parameters)


# --------------------------------------------------------------------------------------
# Route handlers
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CachedPost:
    """A post as GET sends it: its JSON and the headers that depend on the post alone, made
    once from its row (``POST_FIELDS``) and kept in the read cache with it."""

    published: bool
    modified_at: int
    etag: str
    last_modified: str
    body: bytes

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> "CachedPost":
        post_id, _, modified_at, published, version, post_json = row
        etag, last_modified = post_etag(post_id, version), http_date(modified_at)
        return cls(bool(published), modified_at, etag, last_modified, post_json.encode())


@dataclass(frozen=True)
class Blog:
    """What the route handlers work with, opened by the lifespan: the database, and the
    lookups of posts and pages that answer concurrent requests with one query each, and
    keep what they read until the database changes.

    One dependency, not three: Litestar resolves two or more dependencies of a handler in an
    anyio task group, which costs more than the lookup itself."""

    db: Database
    posts: Coalescer[str, CachedPost]
    pages: Coalescer[Listing, Page]
    listings: ListingMemo = field(default_factory=ListingMemo)


def post_not_found(post_id: str) -> NotFoundException:
    return NotFoundException(detail=f"Post with ID {post_id} not found")


@get("/", operation_id="welcome", summary="Welcome", tags=["meta"])
async def welcome() -> Welcome:
    """Says hello; useful to check that the service answers."""
    return Welcome(message="Welcome to the Blog API")


@get("/{path:str}", include_in_schema=False, sync_to_thread=False)
def no_such_docs_page() -> None:
    """Any path under ``/schema`` that no docs page has is the API's JSON 404, where Litestar
    answers an HTML page of its own. Litestar adds its handler for the same path to this router,
    listed before this one, and the app keeps the last handler a path lists for a method."""
    raise NotFoundException


WRITE_ERRORS = [
    NotAuthorizedException,
    PermissionDeniedException,
    MethodNotAllowedException,
    TooManyRequestsException,
    DatabaseUnavailable,
]
"""What any write can answer besides its own errors: no token, not from here (or from a page on another
site), too many, busy."""

UPDATE_ROUTE: dict[str, Any] = {
    "path": "/{post_id:str}",
    **json_body(PostUpdate, require_writer),
    "raises": [NotFoundException, PreconditionFailed, SlugTaken, *BODY_ERRORS, *WRITE_ERRORS],
    "response_headers": [ResponseHeader(name="ETag", description="The post's new ETag.", documentation_only=True)],
}
"""What PUT and PATCH share: they are one operation under two methods, as in the tutorial."""


def documented(*names: str) -> list[ResponseHeader]:
    return [RESPONSE_HEADERS[name] for name in names]


RESPONSE_HEADERS = {
    name: ResponseHeader(name=name, description=description, documentation_only=True)
    for name, description in [
        ("Location", "URL of what was created."),
        ("ETag", "Strong validator: send it back in If-None-Match (304) or If-Match (412 if stale)."),
        ("Last-Modified", "When the post or its comments last changed, for If-Modified-Since."),
        (
            "Cache-Control",
            "`no-cache` for public content (revalidate); `private, no-store` for drafts or with a token.",
        ),
        ("X-Total-Count", "How many match, on all pages."),
        ("Link", "RFC 8288 links to the `first`, `prev`, `next` and `last` pages, where they exist."),
        ("Idempotent-Replayed", "`true` when this is the stored answer to an earlier request with the same key."),
    ]
}


class PostController(Controller):
    """Create, read, update and delete blog posts."""

    path = "/api/posts"
    tags: ClassVar[list[str]] = ["posts"]

    @post(
        **json_body(PostCreate, require_writer),
        operation_id="createPost",
        summary="Create a post",
        raises=[SlugTaken, IdempotencyKeyReused, *BODY_ERRORS, *WRITE_ERRORS],
        response_headers=documented("Location", "ETag", "Idempotent-Replayed"),
    )
    async def create_post(
        self,
        request: Request,
        data: JSONBody[PostCreate],
        blog: NamedDependency[Blog],
        idempotency_key: IdempotencyKey = None,
    ) -> Response[Post]:
        """Create a post; answers 201 with the post and its URL in ``Location``. Without a
        slug, one is made from the title, numbered (``-2``, ``-3``) if already taken."""
        now = utc_now_us()
        post_id = str(uuid.uuid4())
        new_post = NewPost(
            id=post_id,
            title=data.title,
            content=data.content,
            published=data.published,
            slug=data.slug or slugify(data.title),
            slug_chosen=data.slug is not None,
            tags=data.tags,
            now=now,
            title_key=title_sort_key(data.title),
        )
        location = f"{request.scope.get('root_path', '')}{self.path}/{post_id}"
        headers = {"Location": location, "ETag": created_post_etag(post_id)}
        idempotent = IdempotentRequest.of(request, idempotency_key, data)
        if idempotent is None:
            slug = await blog.db.write(partial(insert_new_post, new_post), together=insert_new_posts, row=new_post)
            return json_response(new_post.response_body(slug), headers, status_code=201)

        def insert_once(connection: sqlite3.Connection) -> Response:
            if replay := idempotent.replay(connection, created_post_etag):
                return replay
            body = new_post.response_body(insert_new_post(new_post, connection))
            idempotent.remember(connection, 201, location, body, now)
            return json_response(body, headers, status_code=201)

        return await blog.db.write(insert_once)

    @get(
        operation_id="listPosts",
        summary="List posts",
        raises=[ListChanged, DatabaseUnavailable],
        response_headers=documented("X-Total-Count", "Link", "ETag", "Cache-Control"),
        responses={304: NOT_MODIFIED},
    )
    async def list_posts(
        self,
        request: Request,
        blog: NamedDependency[Blog],
        published: PublishedFilter = None,
        limit: PageSize = 20,
        offset: PageOffset = 0,
        cursor: PageCursorToken = None,
        sort: SortField = None,
        order: SortOrder = None,
        created_after: CreatedAfter = None,
        created_before: CreatedBefore = None,
        q: SearchText = None,
        tag: TagFilter = (),  # type: ignore[assignment]
        if_match: IfMatch = None,
        if_none_match: IfNoneMatch = None,
    ) -> Response[list[Post]]:
        """A page of posts, newest first unless asked otherwise, with the total count in
        ``X-Total-Count`` and the neighbouring pages in ``Link``."""
        secret = blog.db.cursor_secret
        query_string, may_see_drafts = request.scope["query_string"], drafts_visible(request)
        listing = blog.listings.get(query_string, may_see_drafts)
        if listing is None:
            listing = listing_from_query(
                request,
                secret,
                drafts_visible=may_see_drafts,
                limit=limit,
                offset=offset,
                cursor=cursor,
                sort=sort,
                order=order,
                published=published,
                created_after=created_after,
                created_before=created_before,
                q=q,
                tag=tag,
            )
            blog.listings.keep(query_string, may_see_drafts, listing)
        page = await blog.pages.load(listing)
        rendered = render_posts_page(request.url.path, listing, page, secret)
        return page_response(request, rendered, if_match, if_none_match)

    @get(
        "/{post_id:str}",
        operation_id="getPost",
        summary="Get a post",
        raises=[NotFoundException, PreconditionFailed, DatabaseUnavailable],
        response_headers=documented("ETag", "Last-Modified", "Cache-Control"),
        responses={304: NOT_MODIFIED},
    )
    async def get_post(
        self,
        request: Request,
        post_id: PostIdOrSlug,
        blog: NamedDependency[Blog],
        if_none_match: IfNoneMatch = None,
        if_modified_since: IfModifiedSince = None,
        if_match: IfMatch = None,
        if_unmodified_since: IfUnmodifiedSince = None,
    ) -> Response[Post]:
        """One post by its ID or its slug (a draft only for those who may see drafts)."""
        post = await blog.posts.load(post_id)
        if post is None or not (post.published or drafts_visible(request)):
            raise post_not_found(post_id)
        if failed := failed_read_precondition(if_match, if_unmodified_since, post.etag, post.modified_at):
            raise failed
        headers = {
            "ETag": post.etag,
            "Last-Modified": post.last_modified,
            "Cache-Control": cache_control(request, includes_drafts=not post.published),
        }
        if is_not_modified(if_none_match, if_modified_since, post.etag, post.modified_at):
            return not_modified(headers)
        return json_response(post.body, headers)

    @put(operation_id="updatePost", summary="Update a post", **UPDATE_ROUTE)
    async def update_post(
        self,
        post_id: PostId,
        data: JSONBody[PostUpdate],
        blog: NamedDependency[Blog],
        if_match: IfMatch = None,
        if_unmodified_since: IfUnmodifiedSince = None,
        if_none_match: IfNoneMatchForWrites = None,
    ) -> Response[Post]:
        """Change the fields sent and leave the others; ``updated_at`` moves forward. With
        If-Match, only if the post is still at that ETag, with If-Unmodified-Since, only if it
        has not changed since, with If-None-Match, only if it is not at that ETag (else 412,
        and nothing changes)."""
        conditions = write_conditions(post_id, if_match, if_unmodified_since, if_none_match)
        return await apply_update(blog.db, post_id, data, conditions)

    @patch(operation_id="patchPost", summary="Update a post (the same as PUT)", **UPDATE_ROUTE)
    async def patch_post(
        self,
        post_id: PostId,
        data: JSONBody[PostUpdate],
        blog: NamedDependency[Blog],
        if_match: IfMatch = None,
        if_unmodified_since: IfUnmodifiedSince = None,
        if_none_match: IfNoneMatchForWrites = None,
    ) -> Response[Post]:
        """The same as PUT: change the fields sent and leave the others."""
        conditions = write_conditions(post_id, if_match, if_unmodified_since, if_none_match)
        return await apply_update(blog.db, post_id, data, conditions)

    @delete(
        "/{post_id:str}",
        before_request=require_writer,
        operation_id="deletePost",
        summary="Delete a post",
        raises=[NotFoundException, PreconditionFailed, *WRITE_ERRORS],
    )
    async def delete_post(
        self,
        post_id: PostId,
        blog: NamedDependency[Blog],
        if_match: IfMatch = None,
        if_unmodified_since: IfUnmodifiedSince = None,
        if_none_match: IfNoneMatchForWrites = None,
    ) -> None:
        """Delete a post; answers 204 with no body. Its conditional headers work as PUT's."""
        parameters = {"id": post_id, **write_conditions(post_id, if_match, if_unmodified_since, if_none_match)}

        def remove(connection: sqlite3.Connection) -> None:
            if not connection.execute(DELETE_POST, parameters).fetchall():
                raise precondition_failed_or_missing(connection, parameters)

        await blog.db.write(remove)


def page_response(request: Request, page: RenderedPage, if_match: str | None, if_none_match: str | None) -> Response:
    """A rendered page (or list) with its Cache-Control for this request; 412 if If-Match names
    another version of it (RFC 9110 13.2.2), 304 if the client's copy is current."""
    if if_match is not None and not matches_strongly(if_match, page.headers["ETag"]):
        raise ListChanged()
    headers = {**page.headers, "Cache-Control": cache_control(request, page.includes_drafts)}
    if is_not_modified(if_none_match, None, headers["ETag"], 0):
        return not_modified(headers)
    return json_response(page.body, headers)


def comment_not_found(post_id: str, comment_id: str) -> NotFoundException:
    return NotFoundException(detail=f"Comment with ID {comment_id} not found on post {post_id}")


class CommentController(Controller):
    """Comments on a post: add, list (oldest first), read and delete."""

    path = "/api/posts/{post_id:str}/comments"
    tags: ClassVar[list[str]] = ["comments"]

    @post(
        **json_body(CommentCreate, refuse_writes_when_read_only, MAX_COMMENT_BODY_BYTES),
        operation_id="createComment",
        summary="Comment on a post",
        raises=[
            NotFoundException,
            IdempotencyKeyReused,
            *BODY_ERRORS,
            PermissionDeniedException,  # from a page on another site (cross_origin_refusal)
            MethodNotAllowedException,
            TooManyRequestsException,
            DatabaseUnavailable,
        ],
        response_headers=documented("Location", "ETag", "Idempotent-Replayed"),
    )
    async def create_comment(
        self,
        request: Request,
        post_id: PostIdOrSlug,
        data: JSONBody[CommentCreate],
        blog: NamedDependency[Blog],
        idempotency_key: IdempotencyKey = None,
    ) -> Response[Comment]:
        """Add a comment; answers 201 with it, or 404 if the post does not exist (or is a
        draft the caller may not see). Anyone may comment: no token is needed."""
        now = utc_now_us()
        comment_id = str(uuid.uuid4())
        parameters = {"id": comment_id, "post_id": post_id, "now": now, "author": data.author, "body": data.body}
        parameters["drafts"] = drafts_visible(request)
        idempotent = IdempotentRequest.of(request, idempotency_key, data)

        def insert(connection: sqlite3.Connection) -> Response:
            if idempotent and (replay := idempotent.replay(connection, comment_etag)):
                return replay
            if not (inserted := connection.execute(INSERT_COMMENT, parameters).fetchall()):
                raise post_not_found(post_id)
            [(found_id,)] = inserted  # the post's ID, where the path named its slug
            location = f"{request.scope.get('root_path', '')}/api/posts/{found_id}/comments/{comment_id}"
            body = msgspec.json.encode(comment_from_row((comment_id, found_id, data.author, data.body, now)))
            if idempotent:
                idempotent.remember(connection, 201, location, body, now)
            return json_response(body, {"Location": location, "ETag": comment_etag(comment_id)}, status_code=201)

        return await blog.db.write(insert)

    @get(
        operation_id="listComments",
        summary="List a post's comments",
        raises=[NotFoundException, ListChanged, DatabaseUnavailable],
        response_headers=documented("X-Total-Count", "Link", "ETag", "Cache-Control"),
        responses={304: NOT_MODIFIED},
    )
    async def list_comments(
        self,
        request: Request,
        post_id: PostIdOrSlug,
        blog: NamedDependency[Blog],
        limit: PageSize = 20,
        offset: PageOffset = 0,
        cursor: PageCursorToken = None,
        order: CommentOrder = None,
        if_match: IfMatch = None,
        if_none_match: IfNoneMatch = None,
    ) -> Response[list[Comment]]:
        """A page of the post's comments, oldest first (newest with ``order=desc``), paged like posts."""
        refuse_repeated_parameters(request, (*PAGE_PARAMS, "order"))
        refuse_foreign_parameters(request, OTHER_APIS_PAGE_PARAMS)
        refuse_foreign_parameters(request, NOT_COMMENT_PARAMS, of="a post's comments")
        refuse_counts_not_in_digits(request)
        row = await blog.db.fetch_one(SELECT_POST_PK, {"post_id": post_id, "drafts": drafts_visible(request)})
        if row is None:
            raise post_not_found(post_id)
        if cursor is not None and offset:
            raise query_error(request, "offset", "Use either offset or cursor, not both")
        listing = CommentListing(post_id=row[2], post_pk=row[0], limit=limit, offset=offset, descending=order == "desc")
        listing = replace(
            listing,
            cursor=cursor_for(request, cursor, blog.db.cursor_secret, listing.fingerprint),
            link_params=(("limit", str(limit)), *((("order", order),) if order else ())),
        )
        page = page_of(listing, *await blog.db.read(partial(count_and_page, listing)))
        body = msgspec.json.encode([comment_from_row(comment) for comment in page.rows])
        post_is_draft = not row[1]
        rendered = render_page(request.url.path, listing, page, blog.db.cursor_secret, body, post_is_draft)
        return page_response(request, rendered, if_match, if_none_match)

    @get(
        "/{comment_id:str}",
        operation_id="getComment",
        summary="Get a comment",
        raises=[NotFoundException, CommentPreconditionFailed, DatabaseUnavailable],
        response_headers=documented("ETag", "Cache-Control"),
        responses={304: NOT_MODIFIED},
    )
    async def get_comment(
        self,
        request: Request,
        post_id: PostIdOrSlug,
        comment_id: CommentId,
        blog: NamedDependency[Blog],
        if_match: IfMatch = None,
        if_none_match: IfNoneMatch = None,
    ) -> Response[Comment]:
        """One comment of the post. Comments never change, so their ETag is their ID."""
        parameters = {"post_id": post_id, "comment_id": comment_id, "drafts": drafts_visible(request)}
        row = await blog.db.fetch_one(SELECT_COMMENT, parameters)
        if row is None:
            raise comment_not_found(post_id, comment_id)
        post_is_draft = not row[-1]
        headers = {"ETag": comment_etag(comment_id), "Cache-Control": cache_control(request, post_is_draft)}
        if failed := failed_comment_precondition(if_match, None, headers["ETag"]):
            raise failed
        if is_not_modified(if_none_match, None, headers["ETag"], 0):
            return not_modified(headers)
        return Response(comment_from_row(row[:-1]), headers=headers)

    @delete(
        "/{comment_id:str}",
        before_request=require_writer,
        operation_id="deleteComment",
        summary="Delete a comment",
        raises=[NotFoundException, CommentPreconditionFailed, *WRITE_ERRORS],
    )
    async def delete_comment(
        self,
        post_id: PostIdOrSlug,
        comment_id: CommentId,
        blog: NamedDependency[Blog],
        if_match: IfMatch = None,
        if_none_match: IfNoneMatchForWrites = None,
    ) -> None:
        """Delete a comment of the post; answers 204 with no body, or 412 if If-Match or
        If-None-Match holds it back (a comment never changes: its ETag is its ID)."""
        parameters = {"post_id": post_id, "comment_id": comment_id}
        if failed := failed_comment_precondition(if_match, if_none_match, comment_etag(comment_id)):
            if await blog.db.fetch_one(SELECT_COMMENT, {**parameters, "drafts": True}) is None:
                raise comment_not_found(post_id, comment_id)
            raise failed
        deleted = await blog.db.write(partial(fetch_rows, DELETE_COMMENT, parameters))
        if not deleted:
            raise comment_not_found(post_id, comment_id)


async def apply_update(db: Database, post_id: str, data: PostUpdate, conditions: dict[str, Any]) -> Response[Post]:
    def sent(value: Any) -> Any:
        return None if value is UNSET else value

    new_tags = data.tags if isinstance(data.tags, list) else None
    title = sent(data.title)
    parameters = {
        "id": post_id,
        "title": title,
        "title_key": None if title is None else title_sort_key(title),
        "content": sent(data.content),
        "published": sent(data.published),
        "slug": sent(data.slug),
        "tags": None if new_tags is None else msgspec.json.encode(new_tags).decode(),
        "now": utc_now_us(),
        **conditions,
    }

    updated_id, _, _, _, version, post_json = await db.write(
        partial(update_post, parameters), together=update_posts, row=parameters
    )
    return json_response(post_json.encode(), {"ETag": post_etag(updated_id, version)})


class PostsNotUpdated(Exception):
    """``update_posts`` found a post missing, or failing its preconditions (``write_conditions``)."""


def update_posts(connection: sqlite3.Connection, updates: list[dict[str, Any]]) -> list[Any | None]:
    """Apply updates (``UPDATE_POST``'s parameters) in at most five calls however many there
    are (``Together`` for the writer): returns each updated post's row (``POST_FIELDS``), or
    None for a later update of a post updated earlier in the list, which runs alone, after,
    so that each answer shows the post as its own update left it. Raises PostsNotUpdated if a
    post is missing or fails its preconditions (the writer then undoes the others, and runs
    each update alone)."""
    first_of_post: dict[str, int] = {}
    for index, update in enumerate(updates):
        first_of_post.setdefault(update["id"], index)
    distinct = [updates[index] for index in first_of_post.values()]
    if connection.executemany(UPDATE_POST, distinct).rowcount < len(distinct):
        raise PostsNotUpdated()
    retagged = [
        {"id": update["id"], "tags": msgspec.Raw(update["tags"].encode())}  # JSON already
        for update in distinct
        if update["tags"] is not None
    ]
    if retagged:
        retagged_json = msgspec.json.encode(retagged).decode()
        connection.execute(DELETE_POST_TAGS, {"posts": retagged_json})
        add_tags(connection, retagged_json)
    if len(distinct) == 1:  # json_each would double the time of a single lookup
        found = connection.execute(SELECT_POST, (distinct[0]["id"],))
    else:
        found = connection.execute(SELECT_POSTS_BY_KEY, {"keys": msgspec.json.encode(list(first_of_post)).decode()})
    rows = {row[0]: row for row in found}
    return [
        rows[update["id"]] if first_of_post[update["id"]] == index else None for index, update in enumerate(updates)
    ]


def update_post(update: dict[str, Any], connection: sqlite3.Connection) -> Any:
    """Apply one update; returns the post's row. 409 if the new slug is taken, 404 if the post
    is missing, 412 if it fails its preconditions (If-Match, If-Unmodified-Since)."""
    try:
        with slug_must_be_free(update["slug"]):
            [row] = update_posts(connection, [update])
    except PostsNotUpdated:
        raise precondition_failed_or_missing(connection, update) from None
    return row


class NewPost(msgspec.Struct):
    """A post to insert (the parameters of ``INSERT_POST``). Its ``slug`` is the one the client
    chose (``slug_chosen``), or else one made from the title, which is numbered if taken."""

    id: str
    title: str
    content: str
    published: bool
    slug: str
    slug_chosen: bool
    tags: list[str]
    now: int
    title_key: str = ""  # title_sort_key(title); if left '', the transaction makes it (make_title_keys)

    def response_body(self, slug: str) -> bytes:
        """The post as the API shows it, stored with this slug: the body of the 201."""
        created_at = format_timestamp(self.now)
        post = Post(
            id=self.id,
            title=self.title,
            content=self.content,
            created_at=created_at,
            updated_at=created_at,
            published=self.published,
            slug=slug,
            tags=self.tags,
            comment_count=0,
            version=1,
        )
        return msgspec.json.encode(post)


def insert_new_posts(connection: sqlite3.Connection, posts: list[NewPost]) -> list[str | None]:
    """Insert posts with their tags, in at most four calls however many there are
    (``Together`` for the writer): returns each one's slug, or None for one left out because
    its slug was taken.

    The posts go through executemany, not JSON as the tags do: SQLite's JSON functions end
    a string at its first NUL character."""
    inserted = connection.executemany(INSERT_POST, [msgspec.structs.asdict(post) for post in posts]).rowcount
    if not inserted:
        return [None] * len(posts)
    if tagged := [{"id": post.id, "tags": post.tags} for post in posts if post.tags]:
        add_tags(connection, msgspec.json.encode(tagged).decode())
    if inserted == len(posts):
        return [post.slug for post in posts]
    ids = msgspec.json.encode([post.id for post in posts]).decode()
    stored = {post_id for (post_id,) in connection.execute(SELECT_STORED_POST_IDS, {"ids": ids})}
    return [post.slug if post.id in stored else None for post in posts]


def insert_new_post(post: NewPost, connection: sqlite3.Connection) -> str:
    """Insert one post; returns its slug. A slug the client chose must be free (else 409).
    One made from the title is tried as it is first, since most titles are new: a statement
    less is a wait less for the writer (see ``Database._run_batch``)."""
    [slug] = insert_new_posts(connection, [post])
    if slug is not None:
        return slug
    if post.slug_chosen:
        raise slug_taken(post.slug)
    numbered = msgspec.structs.replace(post, slug=free_slug(connection, post.slug))
    [slug] = insert_new_posts(connection, [numbered])
    if slug is None:  # free_slug found it free in this same transaction
        raise RuntimeError(f"the slug {numbered.slug!r} was free, then taken")
    return slug


def free_slug(connection: sqlite3.Connection, slug: str) -> str:
    """``slug`` if no post has it, else ``slug-N`` for a number N no post has: ``slug-2``
    if free, else one whose number N-1 is taken (the next number while none has been
    freed). ``slug`` is cut to make room for ``-N`` within ``MAX_SLUG_LENGTH``, as WordPress
    does, so that the post can be sent back.

    One statement (``FIND_FREE_SLUG``), a few index lookups however many posts share the
    title. Reading every taken ``slug-N``, as this once did, made each create cost more than
    the one before (under wrk, posting one title ran at 474, 213, then 160 a second in three
    rounds of 4 s). And a statement per lookup, as it did next, had the writer take the GIL
    back from the event loop after each one: under read load, posting one title ran at 90 a
    second, against 155 in one statement (medians; see the README's Throughput)."""
    [(free,)] = connection.execute(FIND_FREE_SLUG, {"slug": slug, "max_length": MAX_SLUG_LENGTH}).fetchall()
    return free


@contextmanager
def slug_must_be_free(slug: str | None) -> Iterator[None]:
    """Turn the UNIQUE constraint on posts.slug into a 409 naming the slug."""
    try:
        yield
    except sqlite3.IntegrityError as exc:
        if "posts.slug" not in str(exc):
            raise
        raise slug_taken(slug) from None


def slug_taken(slug: str | None) -> SlugTaken:
    message = f"The slug {slug!r} is already used by another post"
    return SlugTaken(detail=message, extra=[{"message": message, "key": "slug", "source": "body"}])


def add_tags(connection: sqlite3.Connection, posts_json: str) -> None:
    """Give each post (a JSON array of objects with its ``id`` and ``tags``) its tags, in
    their order, making the ones that do not exist yet."""
    connection.execute(INSERT_TAGS, {"posts": posts_json})
    connection.execute(INSERT_POST_TAGS, {"posts": posts_json})


class Health(msgspec.Struct):
    status: str
    database: str
    schema_version: int | None = None


@get(
    "/health",
    operation_id="health",
    summary="Health check",
    tags=["meta"],
    responses={503: ResponseSpec(Health, description="The database cannot answer; `database` says why.")},
)
async def health(blog: NamedDependency[Blog]) -> Response[Health]:
    """200 once the database has really answered a query; 503 with the reason if not."""
    try:
        if (moved_file := await blog.db.moved_file()) is not None:
            raise database_moved_error(moved_file)
        [(schema_version,)] = await blog.db.fetch_all(SELECT_SCHEMA_VERSION)
    except (sqlite3.Error, DatabaseError) as exc:
        logger.warning("health check failed: %s", exc)
        return Response(Health(status="error", database=str(exc)), status_code=503)
    return Response(Health(status="ok", database="ok", schema_version=schema_version))


@get(
    "/api/tags",
    operation_id="listTags",
    summary="List tags",
    tags=["tags"],
    raises=[ListChanged, DatabaseUnavailable],
    response_headers=documented("ETag", "Cache-Control"),
    responses={304: NOT_MODIFIED},
)
async def list_tags(
    request: Request, blog: NamedDependency[Blog], if_match: IfMatch = None, if_none_match: IfNoneMatch = None
) -> Response[list[TagCount]]:
    """Every tag some post has, by name, with how many posts have it (of those the caller may
    see: the counts may include drafts, so then they are private)."""
    refuse_foreign_parameters(request, NOT_TAG_PARAMS, of="/api/tags")
    rows = await blog.db.fetch_all(SELECT_TAG_COUNTS, {"drafts": drafts_visible(request)})
    body = msgspec.json.encode([TagCount(name=name, post_count=count) for name, count in rows])
    tags = RenderedPage(body, {"ETag": page_etag(body, {})}, includes_drafts=drafts_visible(request))
    return page_response(request, tags, if_match, if_none_match)


def unavailable_reason(exc: BaseException) -> str | None:
    """Why the database cannot serve now, or None if ``exc`` is not that kind of error."""
    if not isinstance(exc, sqlite3.OperationalError):
        return None
    code = getattr(exc, "sqlite_errorcode", 0)
    return UNAVAILABLE_ERROR_CODES.get(code) or UNAVAILABLE_ERROR_CODES.get(code & 0xFF)


def database_unavailable(request: Request, exc: sqlite3.OperationalError) -> Response:
    """A database that cannot serve now answers 503 (with ``Retry-After`` when busy);
    any other SQLite error is a bug and answers 500."""
    reason = unavailable_reason(exc)
    if reason is None:
        return server_error(request, exc)
    logger.warning("database unavailable on %s %s: %s", request.method, escape_for_log(request.url.path), exc)
    busy = reason.startswith("The database is busy")
    return Response(
        {"status_code": 503, "detail": reason, "extra": {"request_id": REQUEST_ID.get()}},
        status_code=503,
        headers={"Retry-After": "1"} if busy else None,
    )


# What msgspec says of a query parameter that is not of its type, and what a client of
# the API would understand: every value in a query string is a str.
QUERY_TYPE_ERRORS = {
    "Expected `int`, got `str`": "Expected a whole number",
    "Expected `bool | null`, got `str`": "Expected true, false, 1 or 0",
}


def literal_choices(parameter: Any) -> str:
    """The values an ``Annotated[Literal[...] | None, ...]`` parameter takes, as a client
    would read them: ``asc or desc``."""
    literal = next(arg for arg in get_args(get_args(parameter)[0]) if get_origin(arg) is Literal)
    *others, last = get_args(literal)
    return f"{', '.join(others)} or {last}"


QUERY_CHOICES = {"sort": literal_choices(SortField), "order": literal_choices(SortOrder)}


def whole_number_range(parameter: Any) -> str:
    """The values an ``Annotated[int, QueryParameter(ge=..., le=...)]`` parameter takes."""
    bounds = get_args(parameter)[1]
    return f"{bounds.ge:,} to {bounds.le:,}"


QUERY_RANGES = {"limit": whole_number_range(PageSize), "offset": whole_number_range(PageOffset)}
EMPTY_VALUE = "Expected `str` of length >= 1"
EMPTY_QUERY_VALUES = {"q": NO_SEARCH_WORDS, "cursor": NOT_OUR_CURSOR}
"""What ``?q=`` and ``?cursor=`` (given, but empty) are told: what a value of theirs with nothing in it is."""
OUT_OF_RANGE = re.compile(r"Expected `int` [<>]=")
TOO_LONG = re.compile(r"Expected `str` of length <= ([0-9]+)")
LEADING_ZEROS = re.compile(r"0[0-9]+")
"""A whole number that msgspec does not read as one (it reads numbers as JSON writes them)."""


def clearer_validation_errors(request: Request, exc: ValidationException) -> Response:
    """Litestar's own 400, with what it says of a parameter in the client's terms: a header
    named as clients send it (``Idempotency-Key``, where Litestar names the handler's
    parameter, ``idempotency_key``: litestar-org/litestar#4215), and a query value's type,
    range, choices or length said plainly (not ``Expected `int`, got `str```, ``Expected `int` >= 1``
    or ``Expected `str` of length <= 255``)."""
    for error in exc.extra if isinstance(exc.extra, list) else []:
        if not isinstance(error, dict) or "key" not in error:
            continue
        if error.get("source") == "header":
            error["key"] = "-".join(word.capitalize() for word in error["key"].split("_"))
            if too_long := TOO_LONG.fullmatch(error.get("message", "")):
                error["message"] = f"Expected at most {too_long[1]} characters"
        elif error.get("source") == "query":
            message = error.get("message", "")
            if message.startswith("Invalid enum value") and error["key"] in QUERY_CHOICES:
                message = f"Expected {QUERY_CHOICES[error['key']]}"
            elif OUT_OF_RANGE.match(message) and error["key"] in QUERY_RANGES:
                message = f"Expected a whole number from {QUERY_RANGES[error['key']]}"
            elif message == EMPTY_VALUE and error["key"] in EMPTY_QUERY_VALUES:
                message = EMPTY_QUERY_VALUES[error["key"]]
            elif too_long := TOO_LONG.fullmatch(message):
                message = NOT_OUR_CURSOR if error["key"] == "cursor" else f"Expected at most {too_long[1]} characters"
            elif error["key"] in QUERY_RANGES and LEADING_ZEROS.fullmatch(request.query_params.get(error["key"], "")):
                message = "Expected a whole number without leading zeros (5, not 05)"
            error["message"] = QUERY_TYPE_ERRORS.get(message, message)
    return create_exception_response(request, exc)


def unrouted(request: Request, exc: NotFoundException | MethodNotAllowedException) -> Response:
    """Routing's 404 and 405, which Litestar words only ``Not Found`` and ``Method Not
    Allowed``, saying what was not found or not allowed; a handler's own (``Post with ID x not
    found``, a read-only server's 405) as they are."""
    path, root_path = request.scope["path"], request.scope.get("root_path", "")
    in_app = path_in_app(path, root_path)  # under a root path, uvicorn's * is /blog*
    if in_app == "*":  # RFC 9112 3.2.4: the asterisk form, for OPTIONS alone
        return server_options(request)
    if exc.detail == HTTPStatus.NOT_FOUND.phrase:
        exc.detail = f"No such path: {path} (the API's paths are in {root_path}/schema/openapi.json)"
    elif exc.detail == HTTPStatus.METHOD_NOT_ALLOWED.phrase:
        allowed = request.app.allow_header(in_app)
        exc.detail = f"{path} does not take {request.scope['method']}; it takes {allowed}"
    response = create_exception_response(request, exc)
    response.media_type = MediaType.JSON  # not its route's: the docs' 404 for /schema/x.json was labelled HTML
    # A shared cache may keep a 404 or a 405 for as long as it guesses (RFC 9111 4.2.2): revalidate
    # it as a post is, since the post may be written, or the server restarted writable, meanwhile.
    response.headers["Cache-Control"] = "no-cache"
    return response


def path_in_app(path: str, root_path: str) -> str:
    """A requested path as the app's routes name it: without the prefix the app is served
    under (``root_path``: a proxy's, or an outer app's), taken off as Litestar's router does."""
    return path.split(root_path, maxsplit=1)[-1] if root_path else path


def server_options(request: Request) -> Response:
    """``OPTIONS *`` asks what the server as a whole takes (RFC 9110 9.3.7): every method
    of any path. Any other method has no resource at ``*``: 400."""
    if request.scope["method"] != "OPTIONS":
        detail = f"The request target * is for OPTIONS only, not {request.scope['method']} (RFC 9112 3.2.4)"
        return Response({"status_code": 400, "detail": detail}, status_code=400)
    return Response(None, status_code=HTTP_204_NO_CONTENT, headers={"Allow": request.app.allow_header("*")})


def server_error(request: Request, exc: Exception) -> Response:
    """A 500 that shows nothing inside but the request ID, to find its log lines."""
    return Response(
        {"status_code": 500, "detail": "Internal Server Error", "extra": {"request_id": REQUEST_ID.get()}},
        status_code=500,
    )


async def log_server_error(exc: Exception, scope: Scope) -> None:
    """Log every unexpected exception with its traceback, debug mode or not.

    Litestar logs exceptions only in debug mode by default, and with logging turned on it
    logs every 404 too. Client errors and a busy database are not bugs; everything else is.
    """
    if (isinstance(exc, HTTPException) and exc.status_code < 500) or unavailable_reason(exc):
        return
    method, path = scope.get("method", ""), escape_for_log(scope.get("path", ""))
    logger.error("Internal server error on %s %s", method, path, exc_info=exc)


# --------------------------------------------------------------------------------------
# The app factory
# --------------------------------------------------------------------------------------


NOSNIFF = (b"x-content-type-options", b"nosniff")


async def send_error(send: Send, status: int, detail: str) -> None:
    """An error in blog_api's shape, for an answer given before Litestar sees the request."""
    body = msgspec.json.encode({"status_code": status, "detail": detail})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


ID_IN_ANY_CASE = re.compile(rf"(?<=/){POST_ID_SHAPE}(?=/|$)", re.IGNORECASE)


POST_SEGMENT = re.compile(r"(?<=/api/posts/)[^/]+")


def lowercased_ids(path: str) -> str:
    """``path`` with each post or comment ID in it in lowercase (a UUID is the same in either
    case), and the post's slug without capitals, which a slug never has, as WordPress finds
    one: ``/api/posts/Hello-World`` is ``hello-world``'s. A titlecase letter (``ǅ``), which
    a slug may hold, is left as it is."""
    path = ID_IN_ANY_CASE.sub(lambda match: match[0].lower(), path)
    return POST_SEGMENT.sub(lambda match: without_capitals(match[0]), path, count=1)


def without_capitals(text: str) -> str:
    """``text`` with its capitals (``Lu``) in lowercase, and its titlecase letters as they are."""
    return "".join(char.lower() if char.isupper() else char for char in text)


class BlogAPI(Litestar):
    """Litestar, with what has to happen before routing, at the ASGI entry point:

    - every request gets an ID (its sane ``X-Request-ID``, or a new one), echoed on the
      response and written in every log line of the request;
    - every response, errors included, says ``X-Content-Type-Options: nosniff``: browsers
      must not guess other content types;
    - one access line per request (method, path, status, milliseconds, request ID), errors
      from routing (404, 405) included;
    - a path is read composed (NFC), as slugs are stored, and with its IDs in lowercase, as
      they are stored (a UUID is the same in either case, RFC 9562 4);
    - HEAD is answered as GET without the body (RFC 9110 9.3.2) on every GET route: Litestar
      routes HEAD only to handlers declared for it, and this keeps HEAD out of the OpenAPI
      document, where it would only repeat GET;
    - a compressed answer's ETag names its coding, and If-Match and If-None-Match are read
      without it (``with_coded_etag_and_vary``, ``without_codings``); every answer says
      ``Vary: Accept-Encoding``, and ``Origin`` too with CORS on;
    - a CORS preflight that asks for what is not allowed gets a 400 in blog_api's error shape,
      saying what (``cors_preflight_refusal``), where Litestar's is plain text;
    - a write a browser sends from a page on another site is a 403 (``cross_origin_refusal``);
    - without a token, a request on a loopback socket for a name not this machine's is a
      421 (``misdirected_host``);
    - ``--root-path`` is the request's root path unless the server gave one (``uvicorn
      --root-path``), so that it holds under any server.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.coded_bodies = CodedBodies()
        self.trusted_origins = frozenset(self.cors_config.allow_origins if self.cors_config else ())
        config: Config = self.state.config
        self.local_names_only = config.token is None and not config.allow_anonymous_writes
        self.root_path = config.root_path

    async def __call__(self, scope: Any, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        if self.root_path and not scope.get("root_path"):  # as uvicorn --root-path sets them
            scope = {**scope, "root_path": self.root_path, "path": self.root_path + scope["path"]}
        request_id = request_id_for(scope["headers"])
        context = REQUEST_ID.set(request_id)
        started = time.perf_counter()
        status = 500
        head = scope["method"] == "HEAD"
        request_headers, coded_tags = headers_as_read(scope["headers"])
        if request_headers is not scope["headers"]:
            scope = {**scope, "headers": request_headers}
        asked_path = scope["path"]  # as the client wrote it (routing replaces it): for Allow and the access line
        if not scope["path"].isascii():  # the slug it may name is composed
            scope = {**scope, "path": composed(scope["path"])}
        if not scope["path"].islower() and (path := lowercased_ids(scope["path"])) != scope["path"]:
            scope = {**scope, "path": path}

        async def send_with_request_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = with_coded_etag_and_vary(
                    [*message.get("headers", ()), (b"x-request-id", request_id.encode()), NOSNIFF],
                    status,
                    coded_tags,
                    VARIES_WITH if self.cors_config is None else VARIES_WITH_ORIGIN,
                )
                if status == 405 or scope["method"] == "OPTIONS":  # the answers that carry Allow
                    in_app = path_in_app(asked_path, scope.get("root_path", ""))
                    headers = self.with_full_allow_header(headers, in_app)
                message = {**message, "headers": headers}
            elif head and message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        try:
            if self.local_names_only and (refusal := misdirected_host(scope)):
                await send_error(send_with_request_id, 421, refusal)
                return
            if scope["method"] not in READ_METHODS and (
                refusal := cross_origin_refusal(scope["headers"], self.trusted_origins)
            ):
                await send_error(send_with_request_id, 403, refusal)
                return
            if scope["method"] == "OPTIONS" and self.cors_config is not None:
                refusal = cors_preflight_refusal(self.cors_config, Headers.from_scope(scope))
                if refusal is not None:
                    await send_error(send_with_request_id, 400, refusal)
                    return
            await super().__call__({**scope, "method": "GET"} if head else scope, receive, send_with_request_id)
        finally:
            duration_ms = round((time.perf_counter() - started) * 1000, 2)
            self.log_access(request_id, scope["method"], asked_path, scope.get("root_path"), status, duration_ms)
            REQUEST_ID.reset(context)

    access_line_stream: TextIO | None = None
    """Where ``python blog_api.py`` (text logs) writes its access lines itself: the lines that
    ``TextFormatter`` makes of ``access_logger``'s records, without the logging module's record,
    filter, handler lock and formatting. In an A/B of wrk rounds, the event loop's CPU per
    request went from 231 to 215 µs (a cached GET one) and from 410 to 360 µs (POST). None (an
    app embedded elsewhere, JSON logs): through logging, to whatever handlers are attached."""

    _access_formatter = TextFormatter()

    def log_access(
        self, request_id: str, method: str, path: str, root_path: str | None, status: int, duration_ms: float
    ) -> None:
        """One access line, naming the path as the client asked for it (root path included)."""
        in_app = path_in_app(path, root_path) if root_path else path  # this runs for every request
        level = logging.DEBUG if in_app == "/health" else logging.INFO
        path = escape_for_log(path)
        if self.access_line_stream is None:
            fields = {"method": method, "path": path, "status": status, "duration_ms": duration_ms}
            access_logger.log(level, ACCESS_MESSAGE, method, path, status, duration_ms, extra=fields)
        elif access_logger.isEnabledFor(level):
            line = self._access_formatter.access_line(time.time(), level, request_id, method, path, status, duration_ms)
            with suppress(OSError, ValueError):  # stderr closed or gone: as logging would, serve on
                self.access_line_stream.write(line + "\n")

    def with_full_allow_header(self, headers: list[tuple[bytes, bytes]], path: str) -> list[tuple[bytes, bytes]]:
        """``headers``, with their Allow (if any) listing every method served at ``path``, and
        where that includes PATCH, ``Accept-Patch`` saying what it takes (RFC 5789 3.1)."""
        kept = [(name, value) for name, value in headers if name.lower() != b"allow"]
        if len(kept) < len(headers):
            allowed = self.allow_header(path)
            kept.append((b"allow", allowed.encode()))
            if "PATCH" in allowed:
                kept.append((b"accept-patch", ACCEPT_PATCH.encode()))
        return kept

    def allow_header(self, path: str) -> str:
        """Every method served at ``path`` (at any path for ``*``; HEAD wherever GET is).
        Litestar's own OPTIONS answer lists only the methods of the first handler of a path
        (litestar#4169)."""
        if self._allowed_methods is None:
            self._allowed_methods = allowed_methods_by_path(self.routes)
        if path != "*":
            path = normalize_path(path)  # as routing reads it: /api/posts/ and /api//posts are /api/posts
        methods = {"OPTIONS"}
        for pattern, served in self._allowed_methods:
            if path == "*" or pattern.fullmatch(path):
                methods |= served
        if "GET" in methods:
            methods.add("HEAD")
        if self.state.config.read_only:
            methods &= READ_METHODS
        return ", ".join(sorted(methods))

    _allowed_methods: list[tuple[re.Pattern[str], frozenset[str]]] | None = None


def allowed_methods_by_path(routes: Sequence[Any]) -> list[tuple[re.Pattern[str], frozenset[str]]]:
    """Each route path as a pattern, with every method any handler serves there."""
    methods: dict[str, set[str]] = {}
    for route in routes:
        methods.setdefault(route.path, set()).update(getattr(route, "methods", ()))
    return [
        (
            re.compile(
                "".join(
                    re.escape(part) if i % 2 == 0 else "[^/]+" for i, part in enumerate(re.split(r"(\{[^}]*\})", path))
                )
            ),
            frozenset(found),
        )
        for path, found in methods.items()
    ]


async def read_pages(db: Database, listings: list[Listing]) -> dict[Listing, Page]:
    return await db.read(partial(pages_of, listings))


ROW_OVERHEAD_BYTES = 512
"""Roughly what Python spends on a row besides its text, for ``ReadCache``'s count."""


def post_row_size(row: Sequence[Any]) -> int:
    return ROW_OVERHEAD_BYTES + len(row[-1])


def cached_post_size(post: CachedPost) -> int:
    return ROW_OVERHEAD_BYTES + len(post.body)


def page_size(page: Page) -> int:
    """A page's rows, and as much again for its renderings (one per path, nearly always)."""
    return ROW_OVERHEAD_BYTES + 2 * sum(post_row_size(row) for row in page.rows)


async def fetch_posts_by_key(db: Database, keys: list[str]) -> dict[str, CachedPost]:
    """The posts that ``keys`` name, each under its ID and its slug."""
    rows = await db.fetch_all(SELECT_POSTS_BY_KEY, {"keys": msgspec.json.encode(keys).decode()})
    found: dict[str, CachedPost] = {}
    for row in rows:
        found[row[0]] = found[row[1]] = CachedPost.from_row(row)
    return found


@asynccontextmanager
async def database_lifespan(app: Litestar) -> AsyncIterator[None]:
    """Open the database before the first request and always close it at shutdown.

    An app serves from one event loop at a time: its pool's writer and waiting requests
    belong to the loop that opened it. Started again while it serves (a second TestClient
    around the same app), it had the first loop's requests wait for ever on the second's."""
    if "db" in app.state:
        raise RuntimeError("This app is serving already, and serves one event loop; create_app() makes another")
    config: Config = app.state.config
    db = Database(
        config.db_path,
        readers=config.readers,
        busy_timeout_ms=config.busy_timeout_ms,
        synchronous=config.synchronous,
        echo_sql=config.echo_sql,
        read_only=config.read_only,
        write_lock=config.writers_take_turns,
    )
    await db.open()
    if db.immutable:
        logger.warning(
            "serving %r as an unchanging file (SQLite's immutable=1): its folder cannot be written, and SQLite "
            "reads a WAL database otherwise only with a -shm file beside it; change the file only while "
            "blog_api is stopped",
            config.db_path,
        )
    app.state.db = db
    # As many lookups at once as there are readers: more would only wait for one.
    app.state.blog = Blog(
        db,
        posts=Coalescer(
            partial(fetch_posts_by_key, db),
            max_in_flight=config.readers,
            cache=ReadCache(db.data_version, size_of=cached_post_size),
        ),
        pages=Coalescer(
            partial(read_pages, db),
            max_in_flight=config.readers,
            cache=ReadCache(db.data_version, size_of=page_size),
        ),
    )
    try:
        yield
    finally:
        del app.state.db, app.state.blog
        await db.close()


class FetchesDocumentUnderRootPath:
    """For the docs pages that fetch the OpenAPI document, rather than carry it in the page:
    its URL with the root path the app is served under (``--root-path``), which Litestar
    leaves out, so that behind a proxy they asked for /schema/openapi.json outside the API."""

    @staticmethod
    def get_openapi_json_route(request: Request) -> str:
        return request.scope.get("root_path", "") + request.app.route_reverse(OPENAPI_JSON_HANDLER_NAME)


class ScalarDocs(FetchesDocumentUnderRootPath, ScalarRenderPlugin):
    pass


class RapidocDocs(FetchesDocumentUnderRootPath, RapidocRenderPlugin):
    pass


class StoplightDocs(FetchesDocumentUnderRootPath, StoplightRenderPlugin):
    pass


NOT_RUNNING = (
    "blog_api is not running: it opens its database when the app starts (its lifespan) and "
    "closes it when it stops. Serve it with uvicorn, or test it with litestar.testing's "
    "TestClient or AsyncTestClient, which start it (httpx's ASGITransport does not)"
)


def blog_provider(state: State) -> Callable[[], Blog]:
    """The provider of the Blog that handlers use, which is open only while the app runs: an
    app sent requests without its lifespan (httpx's ASGITransport), or after it stopped,
    answers 503 saying so."""

    def serving_blog() -> Blog:
        try:
            return state["blog"]
        except KeyError:
            raise ServiceUnavailableException(NOT_RUNNING) from None

    return serving_blog


def create_app(config: Config | None = None) -> Litestar:
    """A new app on ``config``'s database. Nothing is opened until the app starts.

    Without a config, the ``BLOG_API_*`` variables make one, as for ``blog_api.app``: that
    is how ``uvicorn blog_api:create_app --factory`` calls it, and with ``Config()``'s
    defaults it served a ``BLOG_API_TOKEN`` it ignored, taking writes without it and
    showing drafts to anyone."""
    config = config or Config.from_env()
    middleware: list[Any] = []
    rate_limit_headers: list[str] = []
    if config.writes_per is not None:  # first: a write with a wrong token counts too, so guesses are slowed
        rate_limit = RateLimitConfig(
            rate_limit=config.writes_per,
            check_throttle_handler=is_write,
            identifier_for_request=rate_limited_client,
        )
        middleware.append(rate_limit.middleware)
        rate_limit_headers = [
            rate_limit.rate_limit_limit_header_key,
            rate_limit.rate_limit_remaining_header_key,
            rate_limit.rate_limit_reset_header_key,
            rate_limit.rate_limit_policy_header_key,
        ]
    openapi_security: dict[str, Any] = {}
    if config.token is not None:
        middleware.append(DefineMiddleware(BearerTokenMiddleware, token=config.token, exclude="^/health$"))
        scheme = SecurityScheme(
            type="http", scheme="bearer", description="The token the service was started with (--token)."
        )
        openapi_security = {
            "components": Components(security_schemes={BEARER_SCHEME: scheme}),
            # Writes need the token; reads take it, to see drafts, or go without.
            "security": [{BEARER_SCHEME: []}, {}],
        }
    cors_config = None
    if config.cors_origins:
        cors_config = CORSConfig(
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=[  # and Content-Type, which Litestar adds with the other safelisted ones
                "Authorization",
                "If-Match",
                "If-None-Match",
                "If-Modified-Since",
                "If-Unmodified-Since",
                "Idempotency-Key",
                "X-Request-ID",
            ],
            expose_headers=[
                "ETag",
                "Link",
                "X-Total-Count",
                "Location",
                "Retry-After",
                "Idempotent-Replayed",
                "X-Request-Id",
                *rate_limit_headers,  # so that a page can say how many writes are left, as GitHub's let it
            ],
        )
    state = State({"config": config})
    return BlogAPI(
        route_handlers=[welcome, health, PostController, CommentController, list_tags],
        # The provider takes no arguments: one asking for ``state`` would cost a new State
        # object and a pass through the signature model on every request. And it reads the
        # Blog as an item: as an attribute, it is found only after an AttributeError.
        dependencies={"blog": Provide(blog_provider(state), sync_to_thread=False)},
        lifespan=[database_lifespan] if config.writes_per is None else [database_lifespan, forgetting_past_writers],
        state=state,
        middleware=middleware,
        cors_config=cors_config,
        compression_config=CompressionConfig(
            backend="brotli", brotli_gzip_fallback=True, minimum_size=1024, middleware_class=NegotiatedCompression
        ),
        exception_handlers={
            sqlite3.OperationalError: database_unavailable,
            ValidationException: clearer_validation_errors,
            TooManyRequestsException: too_many_requests,
            NotFoundException: unrouted,
            MethodNotAllowedException: unrouted,
            **({} if config.debug else {500: server_error}),
        },
        request_max_body_size=MAX_BODY_BYTES,
        after_exception=[log_server_error],
        logging_config=logging_config(config),
        openapi_config=OpenAPIConfig(
            title="Blog API",
            version=__version__,
            servers=[Server(url=config.root_path or "/")],
            description="A blog's JSON API: posts with tags, slugs and comments.",
            render_plugins=[
                SwaggerRenderPlugin(),
                RedocRenderPlugin(),
                ScalarDocs(),
                RapidocDocs(),
                StoplightDocs(),
                YamlRenderPlugin(),
            ],
            openapi_router=Router(
                "/schema", route_handlers=[no_such_docs_page], include_in_schema=False, dto=None, return_dto=None
            ),
            **openapi_security,
        ),
        debug=config.debug,
    )


def __getattr__(name: str) -> Any:
    """``blog_api.app``, made when first asked for (PEP 562): the app that ``uvicorn
    blog_api:app`` (and ``--workers``, ``--reload``) serves, configured from ``BLOG_API_*``
    variables. Made at import, as it was, a bad variable (``BLOG_API_PORT=``) stopped
    ``import blog_api`` itself, in code that makes its own app with its own Config."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    made = globals()["app"] = create_app(Config.from_env())
    return made


# --------------------------------------------------------------------------------------
# Demo data, imports, backups: python blog_api.py seed | import | backup | restore
# --------------------------------------------------------------------------------------

DEMO_TOPICS = (  # noqa: SIM905 (a word list reads better as words)
    "api async blog cache client code database deploy design docs error feature framework guide http "
    "index json latency library litestar logging migration model python query release request response "
    "route schema search server service sqlite stack table testing thread token types update users "
    "version web"
).split()
DEMO_WORDS = (  # noqa: SIM905
    "a about after all also and as at be because but by can for from have how in into is it just like "
    "make more new not now of on one only or other our out over so some such than that the their then "
    "there these they this time to up use we what when which while with will would you"
).split()
DEMO_TAGS = ["python", "litestar", "sqlite", "web", "api", "performance", "testing", "security", "devops",
             "tutorial", "release", "design", "databases", "async", "http"]  # fmt: skip
DEMO_AUTHORS = ["Ada", "Grace", "Linus", "Guido", "Barbara", "Ken", "Margaret", "Dennis", "Frances", "Alan"]
DEMO_END_US = 1_704_067_200_000_000
"""2024-01-01T00:00:00Z: demo posts are dated back from it, an hour apart, so that seeded
timestamps do not depend on today, and 100,000 posts (11 years) are all in the past."""


def demo_sentence(rng: random.Random) -> str:
    words = [rng.choice(DEMO_TOPICS if rng.random() < 0.35 else DEMO_WORDS) for _ in range(rng.randint(5, 12))]
    return " ".join(words).capitalize() + "."


def demo_post(rng: random.Random, number: int) -> tuple[str, str, list[str], bool]:
    """Title, paragraphs, tags and published flag of one post, all from ``rng``."""
    title = f"{rng.choice(DEMO_TOPICS).capitalize()} {rng.choice(DEMO_WORDS)} {rng.choice(DEMO_TOPICS)} #{number}"
    paragraphs = [" ".join(demo_sentence(rng) for _ in range(rng.randint(2, 4))) for _ in range(rng.randint(1, 3))]
    return title, "\n\n".join(paragraphs), rng.sample(DEMO_TAGS, rng.randint(0, 3)), rng.random() >= 0.1


def demo_rows(rng: random.Random, pk: int, hour: int) -> tuple[dict[str, Any], list[tuple], list[tuple]]:
    """The rows of one demo post, created in the ``hour``-th hour before ``DEMO_END_US``: for
    ``SEED_POST``, ``SEED_POST_TAG`` and ``SEED_COMMENT``."""
    title, content, tags, published = demo_post(rng, pk)
    post_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    created = DEMO_END_US - (hour + 1) * 3_600_000_000 + rng.randrange(3_600_000_000)
    slug = f"{slugify(title)}-{post_id[:8]}"
    post = dict(
        pk=pk,
        id=post_id,
        slug=slug,
        title=title,
        title_key=title_sort_key(title),
        content=content,
        published=published,
        created_at=created,
    )
    comments = []
    for minute in range(rng.choice((0, 0, 0, 1, 2, 5))):
        comment_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        body = demo_sentence(rng)
        comments.append((comment_id, pk, created + (minute + 1) * 60_000_000, rng.choice(DEMO_AUTHORS), body))
    return post, [(pk, position, name) for position, name in enumerate(tags)], comments


SEED_BATCH = 5_000
"""Demo posts made and inserted at a time, so that memory stays flat however many are asked for."""


def make_database(db_path: str) -> None:
    """Make a database with the schema, or upgrade an older one, as the service does when
    it starts; a DatabaseError for one it would refuse."""

    async def open_and_close() -> None:
        db = Database(db_path, readers=1)
        await db.open()
        await db.close()

    asyncio.run(open_and_close())


def seed_database(db_path: str, posts: int, random_seed: int) -> dict[str, int]:
    """Add ``posts`` realistic posts (with tags, comments and 10% drafts) in one transaction.
    The same seed gives the same posts, ids and timestamps included, on the same database;
    on one with more posts (seeded already), others, so seeding twice adds twice."""
    make_database(db_path)
    counts = {"posts": posts, "comments": 0}
    with closing(sqlite3.connect(db_path, isolation_level=None)) as connection:
        connection.execute("PRAGMA foreign_keys = ON")
        with write_transaction(connection):
            [(first_pk,)] = connection.execute("SELECT coalesce(max(pk), 0) + 1 FROM posts")
            rng = random.Random(f"{random_seed}/{first_pk}")
            connection.executemany("INSERT OR IGNORE INTO tags (name) VALUES (?)", [(name,) for name in DEMO_TAGS])
            for batch_start in range(first_pk, first_pk + posts, SEED_BATCH):
                post_rows, tag_rows, comment_rows = [], [], []
                for pk in range(batch_start, min(batch_start + SEED_BATCH, first_pk + posts)):
                    post, tags, comments = demo_rows(rng, pk, hour=pk - first_pk)
                    post_rows.append(post)
                    tag_rows += tags
                    comment_rows += comments
                connection.executemany(SEED_POST, post_rows)
                connection.executemany(SEED_POST_TAG, tag_rows)
                connection.executemany(SEED_COMMENT, comment_rows)
                counts["comments"] += len(comment_rows)
            [(counts["drafts"],)] = connection.execute(COUNT_DRAFTS_FROM, (first_pk,))
    return counts


TUTORIAL_COLUMNS = ("id", "title", "content", "published", "created_at", "updated_at")
"""The columns of the tutorial's ``posts`` table (its ``Post`` model) that an import reads."""
MAX_IMPORT_PROBLEMS_SHOWN = 10


def import_tutorial_posts(source: str, target: str) -> dict[str, int]:
    """Copy the posts of the tutorial's SQLAlchemy app, from its database at ``source``,
    into blog_api's at ``target`` (made if missing), in one transaction: with their IDs,
    timestamps and published flags, and slugs made from their titles. A post imported before
    (its ID stored already) is left as it is. All or none: a DatabaseError names the posts
    that break this API's rules, and nothing is imported."""
    if Path(target).exists() and Path(source).exists() and os.path.samefile(source, target):
        raise DatabaseError(
            f"{source!r} is the database to import into as well (--db, default blog.db, the tutorial's file name "
            "too): give another, like --db blog_api.db"
        )
    posts = tutorial_posts(source)
    make_database(target)
    with closing(sqlite3.connect(target, isolation_level=None)) as connection:
        connection.execute("PRAGMA foreign_keys = ON")
        with write_transaction(connection):
            ids = msgspec.json.encode([post["id"] for post in posts]).decode()
            stored = {post_id for (post_id,) in connection.execute(SELECT_STORED_POST_IDS, {"ids": ids})}
            new = [post for post in posts if post["id"] not in stored]
            for post in new:
                connection.execute(IMPORT_POST, {**post, "slug": free_slug(connection, slugify(post["title"]))})
    drafts = sum(not post["published"] for post in new)
    return {"posts": len(new), "drafts": drafts, "imported_before": len(posts) - len(new)}


def tutorial_posts(source: str) -> list[dict[str, Any]]:
    """The posts in the tutorial app's database at ``source``, as ``IMPORT_POST`` takes them,
    each checked as a new post here is; a DatabaseError if the file is not that app's, or
    naming the posts that break the rules."""
    if not Path(source).is_file():
        raise DatabaseError(f"there is no database at {source!r}")
    uri = read_only_uri(source, immutable=must_read_as_immutable(source))
    with closing(sqlite3.connect(uri, uri=True)) as connection:
        [(version,)] = connection.execute(SELECT_SCHEMA_VERSION).fetchall()
        if version:
            raise DatabaseError(f"{source!r} is a blog_api database already: serve it with --db {source}")
        columns = {name for (name,) in connection.execute(SELECT_TUTORIAL_POST_COLUMNS)}
        if missing := [column for column in TUTORIAL_COLUMNS if column not in columns]:
            raise DatabaseError(
                f"{source!r} has no posts table as the tutorial's app makes it (missing: {', '.join(missing)})"
            )
        rows = connection.execute(SELECT_TUTORIAL_POSTS).fetchall()
    posts, problems = [], []
    for row in rows:
        try:
            posts.append(tutorial_post(*row))
        except ValueError as exc:
            problems.append(f"post {row[0]!r}: {exc}")
    if problems:
        shown = "; ".join(problems[:MAX_IMPORT_PROBLEMS_SHOWN])
        unshown = len(problems) - MAX_IMPORT_PROBLEMS_SHOWN
        more = f"; and {unshown} more" if unshown > 0 else ""
        raise DatabaseError(
            f"{counted(len(problems), 'post')} of {source!r} break this API's rules, so none was imported "
            f"(change them in the tutorial's app, or with sqlite3): {shown}{more}"
        )
    return posts


def tutorial_post(
    post_id: Any, title: Any, content: Any, published: Any, created_at: Any, updated_at: Any
) -> dict[str, Any]:
    """One row of the tutorial's posts table, checked by the rules of a new post here (that
    app checked none: a title may be blank, or longer than its VARCHAR(100)); a ValueError
    naming the column that breaks one."""
    if not isinstance(post_id, str) or not UUID_SHAPE.match(post_id.lower()):
        raise ValueError("id: expected a UUID, as the tutorial's app makes them")
    if published not in (0, 1):
        raise ValueError(f"published: expected 0 or 1, got {published!r}")
    try:
        post = msgspec.convert({"title": title, "content": content, "published": bool(published)}, PostCreate)
    except msgspec.ValidationError as exc:
        error = body_error(str(exc))
        raise ValueError(f"{error.get('key', 'post')}: {error['message']}") from None
    created = tutorial_timestamp("created_at", created_at)
    return {
        "id": post_id.lower(),
        "title": post.title,
        "title_key": title_sort_key(post.title),
        "content": post.content,
        "published": post.published,
        "created_at": created,
        "updated_at": max(created, tutorial_timestamp("updated_at", updated_at)),
    }


def tutorial_timestamp(column: str, value: Any) -> int:
    """A timestamp of the tutorial's app as stored here (microseconds since the epoch). That
    app stores ``datetime.utcnow()``, which SQLAlchemy writes as text without an offset
    (``2025-03-12 10:42:35.700944``): UTC."""
    try:
        moment = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise ValueError(f"{column}: expected a date and time like 2025-03-12 10:42:35.700944, got {value!r}") from None
    if moment.utcoffset() is None:
        moment = moment.replace(tzinfo=UTC)
    return stored_timestamp(moment)


def backup_database(source: str, target: str) -> str:
    """Copy a live database to a new file with SQLite's online backup API: one consistent
    snapshot, taken while the service goes on writing (WAL). Returns the copy's
    ``PRAGMA integrity_check``. The copy is written next to ``target`` and renamed to it
    when whole, so a backup that fails or is killed never leaves a file that looks like one."""
    target_path = Path(target)
    if not Path(source).is_file():
        raise DatabaseError(f"there is no database at {source!r}")
    if target_path.exists():
        raise DatabaseError(f"{target!r} exists already; give a new path")
    if not target_path.parent.is_dir():
        raise DatabaseError(f"there is no folder {str(target_path.parent)!r} to write {target!r} in")
    if not os.access(target_path.parent, os.W_OK):
        raise DatabaseError(f"the folder {str(target_path.parent)!r} cannot be written; give a path in one that can")
    partial = target_path.with_name(f"{target_path.name}.partial")
    remove_partial_copy(partial)  # a backup killed before left it: it is no database, or half of one
    try:
        with closing(connect_to_copy(source)) as live, closing(sqlite3.connect(partial)) as copy:
            live.backup(copy)
            [(integrity,)] = copy.execute("PRAGMA integrity_check")
        partial.rename(target_path)
    finally:
        remove_partial_copy(partial)
    return integrity


def connect_to_copy(path: str) -> sqlite3.Connection:
    """A connection to copy ``path`` from; as an unchanging file where SQLite can read it no
    other way (``must_read_as_immutable``)."""
    if must_read_as_immutable(path):
        return sqlite3.connect(read_only_uri(path, immutable=True), uri=True)
    return sqlite3.connect(path)


def restore_database(copy: str, target: str) -> dict[str, int]:
    """Put ``copy`` (made by ``backup``) back in place of the database at ``target``, in one
    transaction, with SQLite's backup API; returns how many posts and comments it holds.

    A service serving ``target`` goes on, and answers from the copy from then on (its read
    cache sees the change, as it sees any other program's). Putting the copy in place of the
    file by hand, as the README said to do, let SQLite apply a WAL left beside the file (by a
    crash, kill -9, a power cut) over the copy: the writes made since the backup came back,
    or, with part of that WAL checkpointed, pages of two moments mixed. Here the target is
    opened as a database, which takes its WAL in, and then every page is the copy's.

    The copy goes through a staging file beside the target first, where it is upgraded if
    an older blog_api made it and checked with ``PRAGMA integrity_check``."""
    if not Path(copy).is_file():
        raise DatabaseError(f"there is no database at {copy!r}")
    if Path(target).exists() and os.path.samefile(copy, target):
        raise DatabaseError(f"{copy!r} is the database to restore into as well (--db, default blog.db)")
    if Path(target).exists():
        with closing(sqlite3.connect(target)) as existing:
            refuse_unless_ours(target, existing, empty_is_ours=True)
    staging = Path(f"{target}.restoring")
    remove_partial_copy(staging)  # a restore killed before left it
    try:
        with closing(connect_to_copy(copy)) as source:
            refuse_unless_ours(copy, source, empty_is_ours=False)
            with closing(sqlite3.connect(staging)) as staged:
                source.backup(staged)
        make_database(str(staging))  # upgraded, if an older blog_api made the copy
        with closing(sqlite3.connect(staging)) as staged:
            [(integrity,)] = staged.execute("PRAGMA integrity_check")
            if integrity != "ok":
                raise DatabaseError(f"the copy {copy!r} failed its integrity check: {integrity}")
            with closing(sqlite3.connect(target)) as restored:
                staged.backup(restored)
                [(posts, comments)] = restored.execute(COUNT_POSTS_AND_COMMENTS).fetchall()
    finally:
        remove_partial_copy(staging)
    return {"posts": posts, "comments": comments}


def refuse_unless_ours(path: str, connection: sqlite3.Connection, *, empty_is_ours: bool) -> None:
    """A DatabaseError unless ``path`` is a blog_api database this blog_api can serve (or,
    with ``empty_is_ours``, one with no tables yet): a restore neither reads a copy of
    another program's nor writes over one."""
    [(version,)] = connection.execute(SELECT_SCHEMA_VERSION).fetchall()
    if version > SCHEMA_VERSION:
        raise DatabaseError(
            f"{path!r} has schema version {version}, newer than this blog_api {__version__} knows "
            f"({SCHEMA_VERSION}); run a newer blog_api"
        )
    if version == 0 and (not empty_is_ours or connection.execute(SELECT_USER_TABLES).fetchall()):
        raise DatabaseError(f"{path!r} is no blog_api database (made by backup, or served by blog_api)")


def remove_partial_copy(partial: Path) -> None:
    """A copy not yet in its place (a backup's, a restore's staging file), with the journal a
    copy that failed (a full disk) may leave."""
    for leftover in ("", "-journal", "-wal", "-shm"):
        partial.with_name(partial.name + leftover).unlink(missing_ok=True)


# --------------------------------------------------------------------------------------
# main(): python blog_api.py
# --------------------------------------------------------------------------------------


def file_path(value: str) -> str:
    """A file SQLite can open and a log line can show, for the commands that make no Config
    (which checks its own). A file name in no UTF-8 reaches Python's argv as lone
    surrogates, which are not printable, and SQLite cannot open. ``seed`` and ``backup``
    work on files: SQLite would read ``:memory:`` as a database gone when the command exits
    (backup wrote a file of that name, which ``--db :memory:`` does not serve)."""
    if not value:
        raise argparse.ArgumentTypeError("expected the path of a file, not an empty one")
    if value == ":memory:":
        raise argparse.ArgumentTypeError(
            "expected the path of a file, not :memory: (a database in memory is gone when this command exits)"
        )
    if not value.isprintable():
        raise argparse.ArgumentTypeError(f"the {UNPRINTABLE_PATH}")
    return value


def defaults_from_env(parser: argparse.ArgumentParser, environ: Mapping[str, str] = os.environ) -> Config:
    """The config that ``BLOG_API_*`` variables make; a bad one is a usage error, as a bad flag is."""
    try:
        return Config.from_env(environ)
    except ValueError as exc:
        parser.error(str(exc))


def versions() -> str:
    """blog_api's version and what it runs on, for a bug report."""
    stack = ", ".join(f"{name} {package_version(name)}" for name in ("litestar", "uvicorn", "aiosqlite"))
    return f"blog_api {__version__} ({stack}, SQLite {sqlite3.sqlite_version}, Python {sys.version.split()[0]})"


def parse_args(argv: Sequence[str] | None = None, environ: Mapping[str, str] = os.environ) -> Config:
    """Read the command line; each flag's default comes from its ``BLOG_API_*`` variable."""
    parser = argparse.ArgumentParser(
        prog="blog_api.py [serve]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Serve the blog API over HTTP with uvicorn.\n\nOther commands:\n"
        "  blog_api.py seed --help     fill the database with demo posts\n"
        "  blog_api.py import --help   copy the posts of the tutorial's app from its database\n"
        "  blog_api.py backup --help   copy the live database\n"
        "  blog_api.py restore --help  put a copy back in its place",
        epilog="Each flag can also be set by the environment variable named in its help.",
    )
    parser.add_argument("--version", action="version", version=versions(), help="say what is running, and exit")
    defaults = defaults_from_env(parser, environ)
    parser.add_argument("--host", default=defaults.host, help="address to bind (BLOG_API_HOST; default %(default)s)")
    parser.add_argument(
        "--port", type=int, default=defaults.port, help="port to bind (BLOG_API_PORT; default %(default)s)"
    )
    parser.add_argument(
        "--db",
        dest="db_path",
        default=defaults.db_path,
        help="SQLite database file, made if missing, or :memory: (BLOG_API_DB; default %(default)s)",
    )
    parser.add_argument(
        "--reload",
        action=argparse.BooleanOptionalAction,
        default=defaults.reload,
        help="restart when the code changes, for development (BLOG_API_RELOAD)",
    )
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        type=str.lower,
        default=defaults.log_level,
        help="least severe level logged (BLOG_API_LOG_LEVEL; default %(default)s)",
    )
    parser.add_argument(
        "--read-only",
        action="store_true",
        default=defaults.read_only,
        help="serve an existing database without writing to it; writes answer 405 (BLOG_API_READ_ONLY)",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=defaults.log_format,
        help="text for people, json for log shippers (BLOG_API_LOG_FORMAT; default %(default)s)",
    )
    parser.add_argument(
        "--echo-sql",
        action="store_true",
        default=defaults.echo_sql,
        help="log every SQL statement with its parameters (BLOG_API_ECHO_SQL)",
    )
    parser.add_argument(
        "--readers",
        type=int,
        default=defaults.readers,
        help=f"reader connections in the pool, 1 to {MAX_READERS} (BLOG_API_READERS; default %(default)s)",
    )
    parser.add_argument(
        "--token", default=defaults.token, help="bearer token that writes need; prefer --token-file (BLOG_API_TOKEN)"
    )
    parser.add_argument(
        "--token-file", metavar="PATH", help="read the token from this file, out of sight of ps (BLOG_API_TOKEN_FILE)"
    )
    parser.add_argument(
        "--allow-anonymous-writes",
        action="store_true",
        default=defaults.allow_anonymous_writes,
        help="without a token, take writes from any address, not only this machine (BLOG_API_ALLOW_ANONYMOUS_WRITES)",
    )
    parser.add_argument(
        "--rate-limit",
        metavar="N/minute",
        default=defaults.rate_limit,
        help="writes allowed per client, e.g. 30/minute; over it: 429 (BLOG_API_RATE_LIMIT)",
    )
    parser.add_argument(
        "--cors-origin",
        dest="cors_origins",
        action="append",
        metavar="URL",
        help="let browser code from this origin call the API, or from any with * (needs --token); repeatable "
        "(BLOG_API_CORS_ORIGINS, comma-separated)",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        default=defaults.debug,
        help="show tracebacks in error responses; never in production (BLOG_API_DEBUG)",
    )
    parser.add_argument(
        "--busy-timeout-ms",
        type=int,
        default=defaults.busy_timeout_ms,
        help="how long a write waits for a lock before answering 503 (BLOG_API_BUSY_TIMEOUT_MS; default %(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=defaults.workers,
        help="worker processes serving the same database; see the README for when more than 1 pays "
        "(BLOG_API_WORKERS; default %(default)s)",
    )
    parser.add_argument(
        "--synchronous",
        choices=SYNCHRONOUS_MODES,
        default=defaults.synchronous,
        help="when a write is acknowledged: full = on disk, survives power loss; normal = survives a crash of "
        "blog_api only; off = for benchmarks (BLOG_API_SYNCHRONOUS; default %(default)s)",
    )
    parser.add_argument(
        "--root-path",
        metavar="PATH",
        default=defaults.root_path,
        help="the path a proxy serves the API under, like /blog, which it takes off each request; the URLs "
        "answered carry it (BLOG_API_ROOT_PATH)",
    )
    args = parser.parse_args(argv)
    values = vars(args)
    token_file = values.pop("token_file")
    values["cors_origins"] = tuple(values["cors_origins"] or defaults.cors_origins)
    try:
        if token_file is not None:
            values["token"] = read_token_file(token_file)
        return Config(**values)
    except ValueError as exc:
        parser.error(str(exc))


def base_url(config: Config) -> str:
    return f"http://{host_and_port(config)}"


def host_and_port(config: Config) -> str:
    host = f"[{config.host}]" if ":" in config.host else config.host
    return f"{host}:{config.port}"


def why_not_listenable(config: Config) -> str | None:
    """Why uvicorn could not listen on ``host:port`` (one line), or None. uvicorn finds out only
    after the app has started and said where it serves; then it logs ``[Errno 98] Address
    already in use`` (naming no address, with --workers) and exits with status 3. Binding is
    tried here as uvicorn does it: one worker binds every address the host resolves to, as
    asyncio does; with --workers or --reload, it binds one socket, IPv6 if the host has a colon."""
    host, port, one_socket = config.host, config.port, config.workers > 1 or config.reload
    where = host_and_port(config)
    try:
        if one_socket:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            addresses = [(family, (host, port))]
        else:
            resolved = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            addresses = [(family, address) for family, _, _, _, address in resolved]
        for family, address in addresses:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6 and not one_socket:
                    probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as asyncio binds it
                probe.bind(address)
    except socket.gaierror as exc:
        return f"cannot listen on {where}: {exc.strerror} (not an address, or a name this machine knows)"
    except OSError as exc:
        hint = LISTEN_ERROR_HINTS.get(exc.errno, "")
        return f"cannot listen on {where}: {exc.strerror or exc}{hint}"
    return None


LISTEN_ERROR_HINTS = {
    errno.EADDRINUSE: " (another server has this port: stop it, or give another --port)",
    errno.EADDRNOTAVAIL: " (not an address of this machine)",
    errno.EACCES: " (ports below 1024 need more rights than this user has: give another --port)",
}


def main(argv: Sequence[str] | None = None) -> None:
    """``python blog_api.py [serve|seed|import|backup|restore] ...``: serve is the default."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments and not arguments[0].startswith("-") and arguments[0] not in COMMANDS:
        refuse_unknown_command(arguments[0])
    command = arguments.pop(0) if arguments and arguments[0] in COMMANDS else "serve"
    COMMANDS[command](arguments)


def refuse_unknown_command(word: str) -> NoReturn:
    """``python blog_api.py sedd``: serve's parser called it an unrecognized argument."""
    message = f"blog_api.py: {word!r} is not a command (they are {', '.join(COMMANDS)}; serve is the default)"
    if close := difflib.get_close_matches(word, COMMANDS, n=1):
        message += f"; did you mean {close[0]}?"
    print(message, file=sys.stderr)
    raise SystemExit(2)


def add_database_argument(parser: argparse.ArgumentParser, defaults: Config, what: str) -> None:
    """The ``--db`` flag of the commands that work on a database file (not ``:memory:``)."""
    help_text = f"{what} (BLOG_API_DB; default %(default)s)"
    parser.add_argument("--db", dest="db_path", type=file_path, default=defaults.db_path, help=help_text)


def run_command(name: str, work: Callable[[], T], *, cannot: str, undone: str) -> T:
    """What ``work`` returns; a failure ends the command ``name`` with one line, not a
    traceback: a DatabaseError's words, or what it ``cannot`` do and SQLite's reason (a full
    disk, a lock held past the busy timeout, a file that is no database), then what is
    ``undone``; and Ctrl-C with the exit status a shell gives a command it interrupted."""
    try:
        return work()
    except KeyboardInterrupt:
        exit_interrupted(f"blog_api {name}: interrupted; {undone}")
    except DatabaseError as exc:
        sys.exit(f"blog_api {name}: {exc}")
    except sqlite3.Error as exc:
        sys.exit(f"blog_api {name}: {cannot}: {exc}; {undone}")


def exit_interrupted(message: str) -> NoReturn:
    """End a command stopped by Ctrl-C with what it left behind, not a traceback, and the
    exit status a shell gives a command killed by SIGINT (128 + 2)."""
    print(message, file=sys.stderr)
    sys.exit(128 + signal.SIGINT)


def counted(number: int, noun: str) -> str:
    """``1 post``, ``2 posts``."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def seed(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="blog_api.py seed",
        description="Fill the database with realistic demo posts: titles, paragraphs, tags, comments, "
        "10% drafts. The same --random-seed gives the same posts; seeding again adds others.",
    )
    defaults = defaults_from_env(parser)
    add_database_argument(parser, defaults, "database file")
    parser.add_argument("--posts", type=int, default=200, help="how many posts to add (default %(default)s)")
    parser.add_argument("--random-seed", type=int, default=0, help="seed of the generator (default %(default)s)")
    args = parser.parse_args(argv)
    if args.posts < 0:
        parser.error("--posts must not be negative")
    started = time.perf_counter()
    counts = run_command(
        "seed",
        lambda: seed_database(args.db_path, args.posts, args.random_seed),
        cannot=f"cannot add posts to {args.db_path!r}",
        undone="nothing was added",
    )
    print(
        f"Seeded {counted(counts['posts'], 'post')} ({counted(counts['drafts'], 'draft')}) and "
        f"{counted(counts['comments'], 'comment')} into {args.db_path} in {time.perf_counter() - started:.1f} s"
    )


def import_posts(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="blog_api.py import",
        description="Copy the posts of the tutorial's SQLAlchemy app from its database into this one, with their "
        "IDs, timestamps and published flags; each gets a slug made from its title. All or none: posts that break "
        "this API's rules (a blank title, say) are named, and nothing is imported. Posts imported before are left "
        "as they are.",
    )
    defaults = defaults_from_env(parser)
    parser.add_argument("source", type=file_path, help="the tutorial app's database (its blog.db)")
    add_database_argument(parser, defaults, "database to import into, made if missing")
    args = parser.parse_args(argv)
    counts = run_command(
        "import",
        lambda: import_tutorial_posts(args.source, args.db_path),
        cannot=f"cannot import {args.source!r} into {args.db_path!r}",
        undone="nothing was imported",
    )
    summary = f"Imported {counted(counts['posts'], 'post')} ({counted(counts['drafts'], 'draft')}) from {args.source}"
    if before := counts["imported_before"]:
        summary += f"; {counted(before, 'post')} imported before, left as {'it was' if before == 1 else 'they were'}"
    print(f"{summary}; serve them with --db {args.db_path}")


def backup(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="blog_api.py backup",
        description="Copy the live database, while the service keeps serving, with SQLite's online backup API.",
    )
    defaults = defaults_from_env(parser)
    parser.add_argument("path", type=file_path, help="where to write the copy (must not exist)")
    add_database_argument(parser, defaults, "database to copy")
    args = parser.parse_args(argv)
    integrity = run_command(
        "backup",
        lambda: backup_database(args.db_path, args.path),
        cannot=f"cannot copy {args.db_path!r} to {args.path!r}",  # SQLite does not say which file is at fault
        undone=f"nothing was written to {args.path}",
    )
    if integrity != "ok":
        sys.exit(f"blog_api backup: the copy at {args.path} failed its integrity check: {integrity}")
    print(f"Backed up {args.db_path} to {args.path} (integrity check: ok); serve it with --db {args.path}")


def restore(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="blog_api.py restore",
        description="Put a copy made by backup back in place of the database, in one transaction, with SQLite's "
        "backup API, while the service serves it or not (it answers from the copy from then on). The copy is "
        "checked first, and upgraded if an older blog_api made it.",
    )
    defaults = defaults_from_env(parser)
    parser.add_argument("path", type=file_path, help="the copy to restore, made by backup")
    add_database_argument(parser, defaults, "database to restore it into")
    args = parser.parse_args(argv)
    counts = run_command(
        "restore",
        lambda: restore_database(args.path, args.db_path),
        cannot=f"cannot restore {args.path!r} into {args.db_path!r}",
        undone=f"{args.db_path} is as it was",
    )
    print(
        f"Restored {args.path} into {args.db_path}: {counted(counts['posts'], 'post')} and "
        f"{counted(counts['comments'], 'comment')} (integrity check: ok)"
    )


OPEN_FILES_WHEN_UNLIMITED = 1 << 16
"""The soft limit on open files to take where the hard one is unlimited (macOS refuses that)."""


def raise_open_file_limit() -> None:
    """Raise the process's soft limit on open files to its hard limit, as Go's runtime does at
    start. Every connection is an open file: at the common soft limit of 1,024, a thousand
    clients that are idle or slow (each may hold its connection 20 s) left no room, and new
    connections were reset. The hard limit is the administrator's; it is left as it is."""
    try:
        import resource  # Unix only
    except ImportError:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = OPEN_FILES_WHEN_UNLIMITED if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def serve(argv: list[str]) -> None:
    config = parse_args(argv)
    if config.token is None and not config.allow_anonymous_writes and not is_loopback_host(config.host):
        risk = (
            "a read-only server takes no writes, but anyone who can reach it could read the drafts. Give --token "
            "(or --token-file): only its holders see them."
            if config.read_only
            else "anyone who can reach it could rewrite the blog. Give --token (or --token-file), or "
            "--allow-anonymous-writes if you mean it."
        )
        sys.exit(f"blog_api: refusing to serve {config.host} without a token: {risk}")
    if (reason := why_not_listenable(config)) is not None:
        sys.exit(f"blog_api: {reason}")
    if config.db_path != ":memory:":
        # Make or check the schema before serving: a database that cannot be used is then one
        # clear line, not uvicorn's traceback of a failed startup; and with --workers, it is
        # done once, not in a race between them.
        try:
            asyncio.run(check_database(config))
        except KeyboardInterrupt:  # while another program holds the lock, say, or a long upgrade
            exit_interrupted("blog_api: interrupted while opening the database, before serving")
        except DatabaseError as exc:
            sys.exit(f"blog_api: {exc}")
    raise_open_file_limit()
    blog = create_app(config)  # also sets up logging, in the format asked for
    skip_unused_log_record_fields()
    write_access_lines_directly(blog)
    url = base_url(config)
    if config.port == 0:  # the system picks one as uvicorn binds; uvicorn's line names it
        url = url.removesuffix(":0") + ":<port>"
    logger.info("Blog API %s on %s with database %s", __version__, url, config.db_path)
    logger.info("API docs: %s/schema/swagger (also /schema/redoc, /schema/openapi.json)", url)
    if config.read_only:
        drafts = "only with the token" if config.token is not None else "to anyone who can reach it"
        logger.info("Read-only (--read-only): every write answers 405; drafts are visible %s.", drafts)
    elif config.token is not None:
        logger.info("Writes need Authorization: Bearer <token>; drafts are visible only with it.")
    elif config.allow_anonymous_writes:
        logger.info("Anyone who can reach this server may write (--allow-anonymous-writes).")
    else:
        logger.info("No token: anyone on this machine may write; other machines may only read.")
    if config.root_path:
        logger.info("Served by a proxy under %s: Location and Link name URLs with it.", config.root_path)
    for warning in Config.unknown_env_variables():
        logger.warning(warning)
    server_options: dict[str, Any] = {"host": config.host, "port": config.port, "log_level": config.log_level}
    server_options["access_log"] = False  # blog_api writes its own, with request IDs
    server_options["http"] = BlogHttpProtocol
    server_options["ws"] = "none"  # blog_api serves no WebSocket: a request asking for one is plain HTTP
    # On SIGTERM or Ctrl-C: refuse new connections, let requests in flight finish (for up to
    # this long), then close the pool, which checkpoints the WAL.
    server_options["timeout_graceful_shutdown"] = config.graceful_shutdown_seconds
    if (log_config := uvicorn_log_config(config)) is not None:
        server_options["log_config"] = log_config
    # uvicorn re-raises SIGTERM once it has shut down gracefully; without this handler that
    # would end the process "killed by a signal" instead of with status 0.
    signal.signal(signal.SIGTERM, exit_after_graceful_shutdown)
    code_dir = str(Path(__file__).resolve().parent)
    if config.reload:
        # The reloader imports a fresh copy of this module, which reads its config from here.
        os.environ.update(config.to_env())
        uvicorn.run("blog_api:app", reload=True, app_dir=code_dir, reload_dirs=[code_dir], **server_options)
    elif config.workers > 1:
        # Each worker imports this module and reads its config from here.
        os.environ.update(config.to_env())
        sys.path.insert(0, code_dir)  # where the workers import blog_api from
        server_config = TcpServerConfig("blog_api:app", workers=config.workers, **server_options)
        Multiprocess(server_config, sockets=[server_config.bind_socket()]).run()
    else:
        serve_in_this_process(blog, **server_options)


ASYNCIO_WRITELINES_IGNORES_FLOW_CONTROL = (3, 12) <= sys.version_info < (3, 12, 9) or (
    (3, 13) <= sys.version_info < (3, 13, 2)
)
"""asyncio's socket transport there never pauses its protocol for what ``writelines`` buffers
(CPython gh-127655): memory grew with every unread answer, and a client that stopped reading
was never cut off. There it is sent joined, with ``write``, as Python 3.11 does; uvloop's is right."""


class HeadWithBodyTransport:
    """A connection's transport that sends a response's head and its body in one system call.

    uvicorn writes the status line and headers as soon as the app starts a response, and the
    body when it comes: two ``send`` calls, and two TCP segments, for every response where one
    would do. aiohttp sends them together the same way (aiohttp#10991). Here a write is held
    back until the next one, which takes it along (``writelines``: one ``writev``), or until
    the end of the event loop's turn, whichever comes first. At most one write is ever held,
    and never past the turn, so nothing waits and flow control still sees every byte.

    py-spy put uvicorn's two writes at 17% of the event loop's time for a cached GET one
    under wrk; sent together, its loop CPU went from 259 to 240 µs a request (wrk walking all
    the posts), and from 281 to 248 µs (three posts in turn).
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self._send_together = transport.writelines
        # Asked three times a request. Passed on by __getattr__, each ask first raised (and
        # dropped) an AttributeError: 3.1% of the instructions of a cached GET one (callgrind).
        self.is_closing = transport.is_closing
        if ASYNCIO_WRITELINES_IGNORES_FLOW_CONTROL and type(transport).__module__.startswith("asyncio."):
            self._send_together = lambda chunks: transport.write(b"".join(chunks))

    def write(self, data: bytes) -> None:
        if self._held is None:
            if data:
                self._held = data
                self._loop.call_soon(self._send_held)
            return
        held, self._held = self._held, None
        self._send_together((held, data))

    def writelines(self, chunks: Iterable[bytes]) -> None:
        self._send_held()
        self._send_together(chunks)

    def write_eof(self) -> None:
        self._send_held()
        self._transport.write_eof()

    lingering_close: Callable[[], None] | None = None
    """What closing does instead, if set: the protocol's close that lets the client finish."""

    def close(self) -> None:
        self._send_held()
        if self.lingering_close is not None:
            self.lingering_close()
        else:
            self._transport.close()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + len(self._held or b"")

    def _send_held(self) -> None:
        held, self._held = self._held, None
        if held and not self._transport.is_closing():  # else the peer has gone: nowhere to send
            self._transport.write(held)

    def __getattr__(self, name: str) -> Any:
        """Everything else (pause_reading, get_extra_info, abort...) as is."""
        return getattr(self._transport, name)


HTTPTOOLS_MAX_URL_BYTES = 65_535
"""The longest URL that ``httptools.parse_url`` takes."""


def error_response_bytes(status: int, reason: str, rule: str, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """A whole response in blog_api's error shape, for the protocol to send before (or
    instead of) the app, on a connection that closes after it. ``default_headers`` are the
    server's (Date, Server), as every response has them."""
    body = msgspec.json.encode({"status_code": status, "detail": f"{reason}: {rule}"})
    head = [f"HTTP/1.1 {status} {reason}\r\n".encode()]
    head += [name + b": " + value + b"\r\n" for name, value in default_headers]
    head.append(f"content-type: application/json\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n".encode())
    return b"".join(head) + body


class ReadingWaitsForTheUnparsed(FlowControl):
    """uvicorn's flow control, but reading stays paused while ``unparsed()``: uvicorn resumes
    it whenever a request reads its body, and each read would add to what waits."""

    def __init__(self, transport: asyncio.Transport, unparsed: Callable[[], bool]) -> None:
        super().__init__(transport)
        self._unparsed = unparsed

    def resume_reading(self) -> None:
        if self.read_paused and not self._unparsed():  # uvicorn asks after every response
            super().resume_reading()


class RefusedHead(Exception):
    """Raised in httptools' callback to stop it parsing: the status, reason and rule to refuse with."""


ONE_HOST = "a request must have one Host header (RFC 9112 3.2; one in HTTP/1.0 may have none)"
NOT_A_HOST = "the Host header must be a host name or address, and a port if any"
TRANSFER_CODING_IN_HTTP_1_0 = "HTTP/1.0 has no Transfer-Encoding, so the body's length is not known (RFC 9112 6.1)"
ONLY_HTTP_1 = "this server speaks HTTP/1.1 (and 1.0)"
TLS_HANDSHAKE = b"\x16\x03"
"""How a TLS connection begins (a handshake record, version 3.x): a client that asked for
https:// here. It cannot read a plain answer, but the log line says what happened."""
ONLY_PLAIN_HTTP = "this is TLS (https://), and this server speaks plain HTTP (http://)"
HTTP_2_PREFACE = "Pause on PRI/Upgrade"
"""What httptools says of ``PRI * HTTP/2.0``, the start of HTTP/2 sent with prior knowledge
(``curl --http2-prior-knowledge``): an HTTP/2 request line, like any other a 505."""
UNKNOWN_HTTP_VERSION = "Invalid HTTP version"
"""What httptools says of a version it does not know (``HTTP/3.0``, ``HTTP/1.2``): a 505, as
HTTP/2's is, not a 400 that called it no HTTP/1.1 request at all."""
HOST = re.compile(rb"(?:[A-Za-z0-9._~!$&'()*+,;=%-]*|\[[0-9A-Fa-f:.]+\])(?::[0-9]*)?")
"""RFC 3986's host (a name, an IPv4 address or an IPv6 one in brackets) and optional port."""
REQUEST_LINE_END = re.compile(rb" HTTP/1\.[01]\r?$")
ASCII_BYTES = bytes(range(128))
NOT_IN_A_URL = "a URL holds only printable ASCII, anything else percent-encoded"


def with_target_percent_encoded(read: bytes) -> bytes:
    """``read``, which begins a request, with the bytes past ASCII in its request line
    percent-encoded, as a URL holds UTF-8: ``curl 'http://…/api/posts?q=café'`` sends the é
    of a query as it is (it encodes only the path), which httptools refused as no URL
    (RFC 3986). nginx takes such a target, and a browser encodes it so (the WHATWG URL
    standard). Only a request line that came whole, ending in HTTP/1's version: the rest is
    httptools' to refuse. Empty lines before it are skipped, as httptools skips them."""
    start = 0
    while read.startswith(b"\r\n", start):
        start += 2
    line_end = read.find(b"\n", start)
    line = read[start:line_end]
    if line_end < 0 or line.isascii() or not REQUEST_LINE_END.search(line):
        return read
    return read[:start] + quote_from_bytes(line, safe=ASCII_BYTES).encode() + read[line_end:]


class BlogHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol as ``python blog_api.py`` serves with it. Elsewhere:
    ``uvicorn blog_api:app --http blog_api:BlogHttpProtocol``, or from Python,
    ``uvicorn.run(app, http=BlogHttpProtocol)``.

    - **One send per response:** head and body go together (``HeadWithBodyTransport``).
    - **A request's line and headers take at most ``MAX_REQUEST_HEAD_BYTES``.** httptools has
      no limit of its own: it keeps every byte of them until they end, so one client sending a
      200 MiB header took 450 MB of memory (h11, uvicorn's other parser, stops at 16 KiB). Past
      the limit, the client gets a 414 (a request line that long) or a 431 (headers). The bytes
      of a head that has not ended are counted as they come, but for the read that began it,
      which may end another request; so while it arrives, a head may hold one read more
      (uvloop reads up to 256 KiB). A head that ends is measured whole before the app sees it.
    - **And they must arrive within ``REQUEST_HEAD_SECONDS``**, from the connection's start or
      the request's first byte, else 408. uvicorn waits for them for ever, so clients that
      send a head slowly (or nothing at all) could hold every connection the process may open.
      A connection that has sent nothing is closed without an answer, as nginx does.
    - **A request's body must keep arriving**, with no pause over ``REQUEST_BODY_PAUSE_SECONDS``
      (as nginx's ``client_body_timeout``), else 408 and the connection closes: uvicorn waits
      for ever, and a client that stops mid-body held its connection and its request's task.
      A pause while the app has not taken what came (uvicorn stops reading) does not count.
    - **An answer sent before its request's body has all come** (a 413 from the body's
      Content-Length, a 401 before the body is looked at) says ``Connection: close``, and
      the connection closes after it: uvicorn read the rest of such a body to drop it,
      however long, so a client that went on sending 100 GB after its 413 was read at
      600 MB/s for as long as it liked.
    - **A target with UTF-8 as it is** (``curl`` sends a query so) is read as if
      percent-encoded (``with_target_percent_encoded``), where httptools refused it.
    - **A request httptools cannot parse** gets a 400 that says what is wrong (``Invalid
      header value char``), or a 501 for a method it does not know, where uvicorn answers
      ``Invalid HTTP request received.`` in plain text. And one that HTTP/1.1 says to refuse,
      which uvicorn serves: without a Host header (or with two, or one that is not a host),
      400; a transfer coding but chunked, 501; Transfer-Encoding in HTTP/1.0, 400; with
      HTTP/2's version, 505.
    - **At most ``MAX_PIPELINED_REQUESTS`` wait, parsed.** uvicorn parses every request a read
      brings, and reads again each time a response ends, however many are waiting: one
      client sending 4 MB of pipelined GETs, reading none of its answers, grew the server by
      235 MB. Here what comes is parsed a slice at a time, and once that many wait, the rest
      waits unparsed, and reading pauses, until they have been answered.
    - **A client must keep reading its answer**, with no pause over
      ``RESPONSE_READ_PAUSE_SECONDS`` (as nginx's ``send_timeout``), else the connection is
      cut off: uvicorn waits for ever, and 40 clients asking for a page of 9.6 MB and reading
      nothing held 171 MB for as long as they stayed.
    - **A client may shut its side once it has sent its requests** (a half-close), and still
      read their answers: uvicorn closed at once, and a POST sent that way was written
      without its 201 ever being sent.
    - **A request that asks to switch protocols is served as any other** (RFC 9110 7.8
      allows ignoring ``Upgrade``): httptools ends it at its head, so uvicorn served a POST
      sent by ``curl --http2`` without its body, and dropped the requests pipelined after it.
    - **A response is dated when its request arrives.** uvicorn moves the Date of every
      response once a second, from a timer of its server loop: it ran 0.3 to 2 s behind the
      clock, so the Last-Modified of a post just changed was later than the Date of its GET
      (RFC 9110 8.8.2.1: it MUST NOT be). Here each read sets it, if its second has passed.

    Refusals are in blog_api's error shape, with the Date, after the answers to the requests
    pipelined before them, and the connection closes. Most requests arrive in one read: they
    set no timer of their own.
    """

    _read_length = 0
    _head_bytes = 0
    _first_read_length = 0
    _in_head = False
    _dropping_input = False
    _head_timer: asyncio.TimerHandle | None = None
    _in_body = False
    _body_timer: asyncio.TimerHandle | None = None
    _shutdown_timer: asyncio.TimerHandle | None = None
    _unread_timer: asyncio.TimerHandle | None = None
    _dated_second = 0
    _unparsed = b""
    _client_done = False
    _refusal: tuple[int, str, str] | None = None
    _refused_cycle: RequestResponseCycle | None = None
    _send_timer: asyncio.TimerHandle | None = None
    _unsent = 0
    _framing_only = False
    _keep_alive_after_body: bool | None = None
    _unparsable = b""  # the read in which httptools found a request it cannot parse

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(HeadWithBodyTransport(transport, self.loop))  # type: ignore[arg-type]
        self.flow = ReadingWaitsForTheUnparsed(self.transport, lambda: bool(self._unparsed))
        self._head_timer = self.loop.call_later(REQUEST_HEAD_SECONDS, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        self._stop_body_timer()
        self._stop_send_timer()
        if self._unread_timer is not None:
            self._unread_timer.cancel()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        self._stop_send_timer()
        self._unsent = self.transport.get_write_buffer_size()
        self._send_timer = self.loop.call_later(RESPONSE_READ_PAUSE_SECONDS, self._send_stalled)

    def resume_writing(self) -> None:
        self._stop_send_timer()
        super().resume_writing()

    def _send_stalled(self) -> None:
        """The client has read none of its answer since the timer was set: cut it off, its
        answer unsent (closing would wait to send it). One that read some is slow, not gone."""
        self._send_timer = None
        if (unsent := self.transport.get_write_buffer_size()) < self._unsent:
            self._unsent = unsent
            self._send_timer = self.loop.call_later(RESPONSE_READ_PAUSE_SECONDS, self._send_stalled)
            return
        rule = f"a client must keep reading its answer, with no pause over {RESPONSE_READ_PAUSE_SECONDS:g} s"
        self.logger.warning("Send Timeout: %s; cut off %s", rule, self._peer())
        self.transport.abort()

    def _stop_send_timer(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def on_message_begin(self) -> None:
        if self._framing_only:
            return
        super().on_message_begin()
        self._head_bytes, self._first_read_length, self._in_head = 0, self._read_length, True

    def on_headers_complete(self) -> None:
        if self._framing_only:
            return
        self._in_head = False
        self._stop_head_timer()
        if self._first_read_length + self._head_bytes > MAX_REQUEST_HEAD_BYTES:  # it may be too large
            self._refuse_the_head_if_too_large()
        self._refuse_a_head_http_1_does_not_allow()
        super().on_headers_complete()
        self._in_body = True  # until the message completes, at once if it has no body

    def on_message_complete(self) -> None:
        if self.parser.should_upgrade() and not self._should_upgrade():
            return  # not its end: httptools stops here, at the head (_read_on_past_upgrade)
        self._in_body = False
        self._stop_body_timer()
        if self._keep_alive_after_body is not None:  # the body has come before its answer began
            if not self.cycle.response_started:
                self.cycle.keep_alive, self.transport.lingering_close = self._keep_alive_after_body, None
            self._keep_alive_after_body = None
        super().on_message_complete()

    def _close_if_answered_before_the_body_ends(self) -> None:
        """Until its body has all come, a request's answer says ``Connection: close``, and
        the connection then closes lingering (see the class's docstring). Only a body that
        arrives over several reads gets here."""
        if self._keep_alive_after_body is None and not self.cycle.response_started:
            self._keep_alive_after_body = self.cycle.keep_alive
            self.cycle.keep_alive = False  # uvicorn says Connection: close, and closes after
            self.transport.lingering_close = self._close_lingering

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown, which ends a connection after its answer: so too one
        whose request's body was still coming (else the body's end gave it back its keep-alive,
        the connection stayed open, and the shutdown cancelled its next request: a 500).

        Such a body may go on coming while the shutdown waits for requests in flight; if it
        has not all come shortly before the wait ends, its request gets a 503 saying to send it
        again. uvicorn would cancel it there: a plain-text 500, and an error with a traceback
        in the log, for a request that wrote nothing.

        And an answer the client has still not read as the wait ends is cut off, with a
        warning naming the client: the wait was for it, and uvicorn logged that it timed out
        as an error, "Cancel 0 running task(s)", naming nothing."""
        if self._keep_alive_after_body is not None:
            self._keep_alive_after_body = False
        if (grace := self.config.timeout_graceful_shutdown) is not None:
            if self._in_body:
                cut_after = max(0.0, grace - BODY_CUT_BEFORE_SHUTDOWN_ENDS_SECONDS)
                self._shutdown_timer = self.loop.call_later(cut_after, self._body_unfinished_at_shutdown)
            cut_after = max(0.0, grace - UNREAD_CUT_BEFORE_SHUTDOWN_ENDS_SECONDS)
            self._unread_timer = self.loop.call_later(cut_after, self._answer_unread_at_shutdown)
        super().shutdown()

    def _answer_unread_at_shutdown(self) -> None:
        self._unread_timer = None
        if self.transport.get_write_buffer_size():
            self.logger.warning("Shutting down: %s has not read all of its answer; cut off", self._peer())
            self.transport.abort()

    def _body_unfinished_at_shutdown(self) -> None:
        self._shutdown_timer = None
        if self.transport.is_closing() or not self._in_body or self.cycle.response_started:
            return  # an answer begun before its body came closes the connection once sent
        rule = "the server is shutting down, and this request's body had not all come; send it again"
        self._refuse_with_warning(503, "Service Unavailable", rule)  # its app sees the client leave: a 499

    def cut_off_at_forced_exit(self) -> None:
        """A second Ctrl-C (uvicorn's force quit): a body still coming is answered 503 now, as
        it is when the graceful wait ends, so that its request no longer waits for it."""
        if self._shutdown_timer is not None:
            self._shutdown_timer.cancel()
        self._body_unfinished_at_shutdown()

    def data_received(self, data: bytes) -> None:
        if self._unparsed:  # read as reading paused: it waits its turn
            self._unparsed += data
            return
        self._parse_while_few_requests_wait(data)

    def on_response_complete(self) -> None:
        super().on_response_complete()  # starts the next request waiting
        if self._unparsed and len(self.pipeline) < MAX_PIPELINED_REQUESTS:
            unparsed, self._unparsed = self._unparsed, b""
            self._parse_while_few_requests_wait(unparsed)
            if not self._unparsed:
                self.flow.resume_reading()
        if self._refusal is not None:
            if self._answered_all_before_the_refusal():
                self._send_refusal()
        elif self._client_done and self.cycle.response_complete and not self.pipeline:  # all answered
            self.transport.close()

    def eof_received(self) -> bool | None:
        """The client has sent all it will (it shut its side, as ``printf ... | nc`` does):
        answer what it sent, then close. uvicorn closed at once, so a POST sent that way
        created its post and its 201 was never sent. A body that will never end, or nothing
        left to answer: close now. (Reading pauses while bytes wait unparsed, so by the time
        the end is seen, everything before it has been parsed.)"""
        if self._in_body or self.cycle is None or (self.cycle.response_complete and not self.pipeline):
            return None
        self._client_done = True
        return True  # the transport stays open for the answers

    def _parse_while_few_requests_wait(self, data: bytes) -> None:
        """Parse ``data`` a slice at a time; once ``MAX_PIPELINED_REQUESTS`` wait, keep the rest
        unparsed (a request takes 1.7 KB parsed, 30 bytes not), and reading paused."""
        if len(data) <= PIPELINE_SLICE_BYTES and len(self.pipeline) < MAX_PIPELINED_REQUESTS:
            self._parse(data)  # most reads: one slice, with room for its requests
            return
        for start in range(0, len(data), PIPELINE_SLICE_BYTES):
            if len(self.pipeline) >= MAX_PIPELINED_REQUESTS:
                self._unparsed = data[start:]
                self.flow.pause_reading()
                return
            self._parse(data[start : start + PIPELINE_SLICE_BYTES])
            if self._dropping_input or self.transport.is_closing():
                return

    def _parse(self, data: bytes) -> None:
        if self._dropping_input:  # the rest of what the client sent before it read the answer
            return
        if (second := int(time.time())) != self._dated_second and self.config.date_header:
            self._date_responses(second)
        if not data.isascii() and not (self._in_head or self._in_body):  # a request line may hold UTF-8
            data = with_target_percent_encoded(data)
        self._read_length = len(data)
        if self._in_head:  # a head that goes on: all of this read may be its
            self._head_bytes += len(data)
        self._feed(data)
        if self.transport.is_closing():
            return
        if self._in_body:  # a body that goes on past this read: the pause starts now
            self._restart_body_timer()
            self._close_if_answered_before_the_body_ends()
        if not self._in_head:
            return
        if self._head_bytes > MAX_REQUEST_HEAD_BYTES:
            self._refuse_with_warning(*self._head_too_large_status(), HEAD_TOO_LARGE)
        elif self._head_timer is None:
            self._head_timer = self.loop.call_later(REQUEST_HEAD_SECONDS, self._head_timed_out)

    def _feed(self, data: bytes) -> None:
        """uvicorn's ``data_received``, but for a request that asks to switch protocols
        (``Upgrade``, as ``curl --http2`` sends with each request to an http URL): httptools
        ends it at its head, taking what follows as the new protocol's, and uvicorn, which
        switches to none, served it without its body (a POST was read as empty: 400) and
        dropped the requests sent after it in the same read. This server does not switch
        either (RFC 9110 7.8 lets it ignore Upgrade), and reads such a request to its end."""
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._unparsable = data
            self.send_400_response("Invalid HTTP request received.")  # which logs what, and from whom
        except httptools.HttpParserUpgrade as upgrade:
            if self._should_upgrade():  # to a WebSocket, under a uvicorn with them on
                self.handle_websocket_upgrade()
            else:
                self._read_on_past_upgrade(data[upgrade.args[0] :])

    def _read_on_past_upgrade(self, rest: bytes) -> None:
        """Read ``rest`` as the body of the request the parser stopped at, and the requests
        after it: with a new parser, given first a head with that request's framing alone
        (its Content-Length or Transfer-Encoding), whose callbacks are not passed on."""
        framing = [name + b": " + value + b"\r\n" for name, value in self.headers if name in FRAMING_FIELDS]
        url, headers = self.url, self.headers
        self.parser = httptools.HttpRequestParser(self)
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)  # as uvicorn's
        self._framing_only, self.headers = True, []
        try:
            self.parser.feed_data(b"".join([b"POST / HTTP/1.1\r\n", *framing, b"\r\n"]))
        finally:
            self._framing_only, self.url, self.headers = False, url, headers
        self._feed(rest)

    def _date_responses(self, second: int) -> None:
        """Date the server's responses from now on with ``second``, as uvicorn's server loop
        does once a second (the server's other headers come after it)."""
        self._dated_second = second
        date = (b"date", format_date_time(second).encode())
        self.server_state.default_headers = [date, *self.config.encoded_headers]

    def _refuse_the_head_if_too_large(self) -> None:
        """Measure the head just parsed (as sent, but for spaces around header values); over
        the limit, stop the parser before the app sees the request, and refuse it."""
        line = len(self.parser.get_method()) + len(self.url) + len(b"  HTTP/1.1\r\n")
        head_bytes = line + sum(len(name) + len(value) + len(b": \r\n") for name, value in self.headers) + 2
        if head_bytes > MAX_REQUEST_HEAD_BYTES:
            raise RefusedHead(*self._head_too_large_status(), HEAD_TOO_LARGE)

    def _refuse_a_head_http_1_does_not_allow(self) -> None:
        """What RFC 9112 says to refuse, which uvicorn served: an HTTP/1.1 request without a
        Host header, or with two, or one that is not a host (3.2: 400); a transfer coding
        other than chunked, which it ignored, reading the body as if plain (6.1: 501);
        Transfer-Encoding in HTTP/1.0, which has none, a way to smuggle a request past a proxy
        (6.1: 400). Before those, a version other than 1.x (505): HTTP/2's on a line of HTTP/1
        text is not HTTP/2, and a request line without one is HTTP/0.9's, which has no headers
        (it was told that it needs a Host header)."""
        hosts, codings = [], []
        for name, value in self.headers:
            if name == b"host":
                hosts.append(value)
            elif name == b"transfer-encoding":
                codings += value.lower().split(b",")
        version = self.parser.get_http_version()
        if not version.startswith("1."):
            raise RefusedHead(505, "HTTP Version Not Supported", ONLY_HTTP_1)
        if len(hosts) > 1 or (not hosts and version != "1.0"):
            raise RefusedHead(400, "Bad Request", ONE_HOST)
        if hosts and not HOST.fullmatch(hosts[0]):
            raise RefusedHead(400, "Bad Request", NOT_A_HOST)
        if codings and version == "1.0":
            raise RefusedHead(400, "Bad Request", TRANSFER_CODING_IN_HTTP_1_0)
        if codings and any(coding.strip() != b"chunked" for coding in codings):
            raise RefusedHead(501, "Not Implemented", "the only transfer coding this server takes is chunked")

    def _peer(self) -> str:
        """The client's address, for a log line."""
        return self.client[0] if self.client else "a client"

    def _head_too_large_status(self) -> tuple[int, str]:
        if len(self.url) > MAX_REQUEST_HEAD_BYTES // 2:  # a request line that long
            return 414, "URI Too Long"
        return 431, "Request Header Fields Too Large"

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._unparsed:  # the rest has come, and waits for the requests before it
            self._head_timer = self.loop.call_later(REQUEST_HEAD_SECONDS, self._head_timed_out)
            return
        if not self._in_head:  # nothing sent since the connection opened
            self.transport.close()
            return
        rule = f"a request's line and headers must arrive within {REQUEST_HEAD_SECONDS:g} s"
        self._refuse_with_warning(408, "Request Timeout", rule)

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self.transport.is_closing() or not self._in_body:
            return
        if self.flow.read_paused:  # the app is the one behind: wait for it
            self._restart_body_timer()
            return
        rule = f"a request's body must keep arriving, with no pause over {REQUEST_BODY_PAUSE_SECONDS:g} s"
        self.logger.warning("Request Timeout: %s from %s", rule, self._peer())
        if not self.cycle.response_started:  # the app may have answered before it read the body
            self.transport.write(error_response_bytes(408, "Request Timeout", rule, self.server_state.default_headers))
        self.transport.close()  # the app's request sees the client leave: 499 in its access line

    def _restart_body_timer(self) -> None:
        self._stop_body_timer()
        self._body_timer = self.loop.call_later(REQUEST_BODY_PAUSE_SECONDS, self._body_timed_out)

    def _stop_body_timer(self) -> None:
        """The body is no longer awaited (it has come, or its request is refused or gone)."""
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        if self._shutdown_timer is not None:
            self._shutdown_timer.cancel()
            self._shutdown_timer = None

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def send_400_response(self, msg: str) -> None:
        """A request httptools cannot parse: uvicorn answers a plain-text 400 that says only
        ``Invalid HTTP request received.``, and logs that, naming neither the problem nor the
        client. Here the answer, in blog_api's error shape, and a warning naming the client say
        what httptools found wrong (in the exception being handled), or it is a 501 for a
        method it does not know (RFC 9110 9.1); uvicorn's callbacks parse
        the URL, and httptools reports what they raise as a callback error. Anything else a
        callback raises is a bug: a 500, logged with its traceback. The connection closes."""
        problem = sys.exception()
        if isinstance(problem, httptools.HttpParserCallbackError):  # raised in a callback of uvicorn's or ours
            problem = problem.__context__
        if isinstance(problem, RefusedHead):
            self._refuse_with_warning(*problem.args)
            return
        if problem is not None and not isinstance(problem, httptools.HttpParserError):  # a bug, not the client's
            self.logger.error("Error while reading a request", exc_info=problem)
            self._refuse(500, "Internal Server Error", "see the server's log")
            return
        if isinstance(problem, httptools.HttpParserInvalidMethodError) and self._unparsable.startswith(TLS_HANDSHAKE):
            status, reason, rule = 400, "Bad Request", ONLY_PLAIN_HTTP
        elif isinstance(problem, httptools.HttpParserInvalidMethodError):
            status, reason, rule = 501, "Not Implemented", "the request's method is not one this server knows"
        elif isinstance(problem, httptools.HttpParserInvalidURLError) and len(self.url) > HTTPTOOLS_MAX_URL_BYTES:
            status, reason, rule = 414, "URI Too Long", HEAD_TOO_LARGE  # too long for httptools: never measured
        elif isinstance(problem, httptools.HttpParserInvalidURLError) and str(problem).startswith("invalid url b"):
            # parse_url's words, with the target as Python bytes; the parser's own say which character
            target = self.url.decode("latin-1")
            status, reason = 400, "Bad Request"
            rule = f"not a valid HTTP/1.1 request (its target {target!r} is not a URL)"
        elif str(problem) in (HTTP_2_PREFACE, UNKNOWN_HTTP_VERSION):
            status, reason, rule = 505, "HTTP Version Not Supported", ONLY_HTTP_1
        elif str(problem).startswith("Invalid char in url"):  # a control character, say
            status, reason, rule = 400, "Bad Request", f"not a valid HTTP/1.1 request ({problem}: {NOT_IN_A_URL})"
        else:
            status, reason, rule = 400, "Bad Request", f"not a valid HTTP/1.1 request ({problem or msg})"
        self._refuse_with_warning(status, reason, rule)

    def _refuse_with_warning(self, status: int, reason: str, rule: str) -> None:
        self.logger.warning("%s: %s from %s", reason, rule, self._peer())
        self._refuse(status, reason, rule)

    def _refuse(self, status: int, reason: str, rule: str) -> None:
        """Answer the request being read with an error, and end the connection: at once, or
        once the requests pipelined before it are answered, in their order (sent at once, the
        refusal read as the answer to the first of them). What the client sends after it is
        dropped. A request refused in its body has been handed to the app already: the app
        sees it end as if the client had left, and the refusal is its answer."""
        self._stop_head_timer()
        self._dropping_input = True
        self._refusal = (status, reason, rule)
        self.flow.pause_reading()
        if self._in_body:
            self._in_body = False
            self._stop_body_timer()
            self._refused_cycle = self.cycle
        if self._answered_all_before_the_refusal():
            self._send_refusal()

    def _answered_all_before_the_refusal(self) -> bool:
        """Whether every request read before the refused one has been answered: the last one
        read, if it is not the refused one itself (whose app has not begun to answer)."""
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            return True
        return not self.pipeline and cycle is self._refused_cycle and not cycle.response_started

    def _send_refusal(self) -> None:
        if (cycle := self._refused_cycle) is not None:  # its app, waiting for the body, gives up
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.write(error_response_bytes(*self._refusal, self.server_state.default_headers))
        self._close_lingering()

    def _close_lingering(self) -> None:
        """End the connection after its last answer, the client perhaps still sending. Closing
        at once, with the client's bytes unread, would answer them with a TCP reset, which may
        discard the answer before the client reads it. So: end the sending side, and read and
        drop what still comes, for ``LINGERING_CLOSE_SECONDS`` at most (nginx's lingering close)."""
        self.transport.lingering_close = None  # what closes it in the end
        if self.transport.is_closing():
            return
        self._dropping_input = True
        self._unparsed = b""
        self._in_body = False
        self._stop_body_timer()
        self._unset_keepalive_if_required()
        self.transport.write_eof()
        self.flow.resume_reading()
        self.loop.call_later(LINGERING_CLOSE_SECONDS, self.transport.close)


class TcpServerConfig(uvicorn.Config):
    """uvicorn's config for worker processes, with three changes.

    The socket it binds says it is TCP: uvicorn leaves its ``proto`` at 0, and asyncio then
    leaves Nagle's algorithm on for every connection accepted from it, so each keep-alive
    request waited ~40 ms for the client's delayed ACK (uvicorn#3149). One worker is not
    affected: uvicorn binds through asyncio there.

    And each worker process, as it sets up logging, skips the log record fields no line shows,
    and has the app it loads write its access lines as one process does.
    """

    def configure_logging(self) -> None:
        super().configure_logging()
        skip_unused_log_record_fields()

    def load_app(self) -> Any:
        blog = super().load_app()
        write_access_lines_directly(blog)
        return blog

    def bind_socket(self) -> socket.socket:
        bound = super().bind_socket()
        if bound.family not in (socket.AF_INET, socket.AF_INET6) or bound.proto != 0:
            return bound
        return socket.socket(bound.family, bound.type, socket.IPPROTO_TCP, fileno=bound.detach())


class ServerClosingAtForcedExit(uvicorn.Server):
    """uvicorn's server, but a second Ctrl-C (its "CTRL+C to force quit") still closes the app.
    uvicorn then stops waiting for the requests in flight and skips the app's shutdown, and
    Python's exit cancelled both: for a request whose body was still coming, a plain-text 500
    and ~50 lines of traceback at ERROR; for the app, ~50 more, its database left unclosed.
    Here a body still coming is answered 503 (``BlogHttpProtocol.cut_off_at_forced_exit``),
    the requests inside the app get ``FORCED_EXIT_SECONDS`` to end, and the app shuts down
    as after one Ctrl-C."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await super().shutdown(sockets)
        if not self.force_exit or self.lifespan.shutdown_event.is_set():
            return  # one Ctrl-C, or the second came as the app was shutting down: uvicorn waited for it
        for connection in list(self.server_state.connections):
            connection.cut_off_at_forced_exit()
        if self.server_state.tasks:
            await asyncio.wait(set(self.server_state.tasks), timeout=FORCED_EXIT_SECONDS)
        await self.lifespan.shutdown()


def serve_in_this_process(app: Litestar, **options: Any) -> None:
    """``uvicorn.run(app, **options)``, on a server that closes the app at a second Ctrl-C too."""
    server = ServerClosingAtForcedExit(uvicorn.Config(app, **options))
    with suppress(KeyboardInterrupt):  # the Ctrl-C it shut down for, raised again once it has
        server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)


async def check_database(config: Config) -> None:
    """Open the database as the service would (making it, or its schema, if missing), then close it."""
    db = Database(
        config.db_path,
        readers=1,
        read_only=config.read_only,
        synchronous=config.synchronous,
        write_lock=config.writers_take_turns,
    )
    await db.open()
    await db.close()


def exit_after_graceful_shutdown(signum: int, frame: Any) -> None:
    raise SystemExit(0)


COMMANDS = {"serve": serve, "seed": seed, "import": import_posts, "backup": backup, "restore": restore}


if __name__ == "__main__":
    sys.exit(main())
