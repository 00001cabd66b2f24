"""blog_api: a blog's JSON API in one module, on Litestar and hand-written SQL over SQLite.

Read top to bottom: configuration, the API's types, SQL, the database (one writer and a
pool of readers), route handlers, the app factory, and ``main()``.

    python blog_api.py                   # serve on http://127.0.0.1:8000
    uvicorn blog_api:app                 # the same app, configured from BLOG_API_* variables
    app = create_app(Config(db_path=":memory:"))   # embed one in a demo or a test
"""

import argparse
import asyncio
import os
import re
import sqlite3
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, ClassVar, Generic, TypeVar

import aiosqlite
import msgspec
import uvicorn
from litestar import Controller, Litestar, Request, Response, delete, get, patch, post, put
from litestar.datastructures import ResponseHeader, State
from litestar.di import NamedDependency, Provide
from litestar.dto import MsgspecDTO
from litestar.exceptions import (
    ClientException,
    HTTPException,
    NotFoundException,
    ServiceUnavailableException,
    ValidationException,
)
from litestar.logging import LoggingConfig
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import (
    RapidocRenderPlugin,
    RedocRenderPlugin,
    ScalarRenderPlugin,
    StoplightRenderPlugin,
    SwaggerRenderPlugin,
    YamlRenderPlugin,
)
from litestar.openapi.spec import Reference, Schema
from litestar.params import JSONBody, PathParameter, QueryParameter
from litestar.status_codes import HTTP_503_SERVICE_UNAVAILABLE
from litestar.types import Message, Receive, Scope, Send
from litestar.typing import FieldDefinition
from msgspec import UNSET, Meta, UnsetType

__version__ = "1.0.0"

# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------

SCHEMA_PATH = Path(__file__).with_name("schema.sql")
SCHEMA_VERSION = 1
"""The ``PRAGMA user_version`` that schema.sql sets; a database at any other version is
upgraded or refused."""

MIN_SQLITE_VERSION = (3, 37, 0)  # STRICT tables; RETURNING needs 3.35
MAX_BODY_BYTES = 1024 * 1024
ENV_PREFIX = "BLOG_API_"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


@dataclass(frozen=True)
class Config:
    """Everything that can be configured, from CLI flags or ``BLOG_API_*`` variables."""

    db_path: str = "blog.db"
    host: str = "127.0.0.1"
    port: int = 8000
    reload: bool = False
    log_level: str = "info"
    readers: int = 4
    busy_timeout_ms: int = 5000

    def __post_init__(self) -> None:
        if not self.db_path:
            raise ValueError("the database path must not be empty (use :memory: for a database in memory)")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, got {self.port}")
        if self.log_level not in LOG_LEVELS:
            raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")
        if self.readers < 1:
            raise ValueError(f"readers must be at least 1, got {self.readers}")
        if self.busy_timeout_ms < 0:
            raise ValueError(f"busy timeout must not be negative, got {self.busy_timeout_ms}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "Config":
        """Read ``BLOG_API_DB``, ``BLOG_API_PORT``, ...; unset variables keep the defaults."""
        values: dict[str, Any] = {}
        for name, field in cls.__dataclass_fields__.items():
            variable = env_variable(name)
            if variable not in environ:
                continue
            raw = environ[variable].strip()
            if field.type is bool:
                if raw.lower() not in ("1", "true", "yes", "0", "false", "no", ""):
                    raise ValueError(f"{variable} must be true or false, got {raw!r}")
                values[name] = raw.lower() in ("1", "true", "yes")
            elif field.type is int:
                try:
                    values[name] = int(raw)
                except ValueError:
                    raise ValueError(f"{variable} must be a whole number, got {raw!r}") from None
            else:
                values[name] = raw.lower() if name == "log_level" else raw
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The variables that make ``Config.from_env()`` return this config (for --reload)."""
        return {env_variable(name): str(value) for name, value in vars(self).items()}


def env_variable(field_name: str) -> str:
    return ENV_PREFIX + ("DB" if field_name == "db_path" else field_name.upper())


# --------------------------------------------------------------------------------------
# Types of the API
# --------------------------------------------------------------------------------------

Title = Annotated[
    str,
    Meta(min_length=1, max_length=100, description="1 to 100 characters.", examples=["My First Litestar Blog Post"]),
]
Content = Annotated[
    str, Meta(min_length=1, description="Not empty.", examples=["Litestar makes API development easy."])
]
Ignored = Annotated[Any, Meta(description="Read-only: set by the server, ignored if a client sends it back.")]


class Welcome(msgspec.Struct):
    message: str


class PostCreate(msgspec.Struct, forbid_unknown_fields=True):
    """A new post. Any field not listed here is refused."""

    title: Title
    content: Content
    published: bool = True
    id: Ignored = None
    created_at: Ignored = None
    updated_at: Ignored = None


class PostUpdate(msgspec.Struct, forbid_unknown_fields=True):
    """A partial update: only the fields sent change; ``null`` leaves a field as it is."""

    title: Title | UnsetType | None = UNSET
    content: Content | UnsetType | None = UNSET
    published: bool | UnsetType | None = UNSET
    id: Ignored = None
    created_at: Ignored = None
    updated_at: Ignored = None


class Post(msgspec.Struct):
    """A post as the API returns it, in the tutorial's field order."""

    id: Annotated[str, Meta(description="UUID4, made by the server.")]
    title: str
    content: str
    created_at: Annotated[datetime, Meta(description="UTC, RFC 3339.")]
    updated_at: Annotated[datetime, Meta(description="UTC, RFC 3339; strictly increases on every change.")]
    published: bool


PostId = Annotated[str, PathParameter(description="The post's ID, as returned when it was created.")]
PublishedFilter = Annotated[
    bool | None,
    QueryParameter(description="`true`: only published posts; `false`: only drafts; absent: all."),
]


class RequestEntityTooLarge(ClientException):
    """Documents the 413 that Litestar answers for bodies over ``MAX_BODY_BYTES``."""

    status_code = 413
    detail = "Request Entity Too Large"


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
        except msgspec.ValidationError as exc:
            raise validation_failed(self.asgi_connection, body_error(str(exc))) from None
        except msgspec.DecodeError as exc:
            raise validation_failed(self.asgi_connection, {"message": str(exc)}) from None

    @classmethod
    def create_openapi_schema(
        cls, field_definition: FieldDefinition, handler_id: str, schema_creator: Any
    ) -> Reference | Schema:
        reference = schema_creator.for_field_definition(FieldDefinition.from_annotation(cls.model_type))
        # The Structs refuse unknown fields (forbid_unknown_fields); the schema says so too.
        schema_creator.schema_registry.from_reference(reference).schema.additional_properties = False
        return reference


async def require_json_body(request: Request) -> None:
    """Refuse an empty body clearly (Litestar would report it as a missing "'data'")."""
    if not await request.body():
        raise validation_failed(request, {"message": "The body is empty; expected a JSON object"})


def validation_failed(request: Request, error: dict[str, str]) -> ValidationException:
    """Litestar's own 400 for a bad body, with ``extra`` saying what is wrong and where."""
    return ValidationException(
        detail=f"Validation failed for {request.method} {request.url.path}",
        extra=[{**error, "source": "body"}],
    )


FIELD_PATH = re.compile(r"^(?P<message>.*) - at `\$\.(?P<key>\w+)")
NAMED_FIELD = re.compile(r"field `(?P<key>[^`]+)`")


def body_error(message: str) -> dict[str, str]:
    """Turn msgspec's message into ``{"message", "key"}``, naming the field it is about."""
    if match := FIELD_PATH.match(message):
        return {"message": match["message"], "key": match["key"]}
    if match := NAMED_FIELD.search(message):
        return {"message": message, "key": match["key"]}
    return {"message": message}


# --------------------------------------------------------------------------------------
# SQL
# --------------------------------------------------------------------------------------

POST_COLUMNS = "id, title, content, created_at, updated_at, published"

SELECT_POST = f"""
SELECT {POST_COLUMNS}
FROM posts
WHERE id = ?
"""

SELECT_POSTS = f"""
SELECT {POST_COLUMNS}
FROM posts
ORDER BY created_at DESC, id DESC
"""

SELECT_POSTS_BY_PUBLISHED = f"""
SELECT {POST_COLUMNS}
FROM posts
WHERE published = ?
ORDER BY created_at DESC, id DESC
"""

INSERT_POST = """
INSERT INTO posts (id, title, content, published, created_at, updated_at)
VALUES (:id, :title, :content, :published, :now, :now)
"""

# NULL parameters leave a column as it is. updated_at moves only when something changes
# (as in the tutorial), and then to a moment strictly after its previous value.
UPDATE_POST = f"""
UPDATE posts
SET title = coalesce(:title, title),
    content = coalesce(:content, content),
    published = coalesce(:published, published),
    updated_at = CASE
        WHEN coalesce(:title, title) IS title
         AND coalesce(:content, content) IS content
         AND coalesce(:published, published) IS published
        THEN updated_at
        ELSE max(:now, updated_at + 1)
    END
WHERE id = :id
RETURNING {POST_COLUMNS}
"""

DELETE_POST = """
DELETE FROM posts
WHERE id = ?
RETURNING id
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


def post_from_row(row: Sequence[Any]) -> Post:
    post_id, title, content, created_at, updated_at, published = row
    return Post(
        id=post_id,
        title=title,
        content=content,
        created_at=EPOCH + timedelta(microseconds=created_at),
        updated_at=EPOCH + timedelta(microseconds=updated_at),
        published=bool(published),
    )


def sql_statements(script: str) -> list[str]:
    """Split a script into statements the way the sqlite3 shell does (triggers included)."""
    statements, pending = [], ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    leftover = [line for line in pending.splitlines() if line.strip() and not line.strip().startswith("--")]
    if leftover:
        raise ValueError(f"the script ends with an incomplete statement: {leftover[0][:80]!r}")
    return statements


# --------------------------------------------------------------------------------------
# The database: one writer connection and a pool of readers
# --------------------------------------------------------------------------------------


class DatabaseError(Exception):
    """The database cannot be opened or used; the message says why, for a person."""


class Database:
    """One SQLite file, served to async code the way Datasette does it.

    Each aiosqlite connection owns a worker thread that runs its calls in order. Writes go
    through the single writer connection, one transaction at a time (``BEGIN IMMEDIATE``
    under an asyncio lock); reads take any idle reader connection, so they never wait for
    a write (WAL). A ``:memory:`` database exists only inside one connection, so there the
    writer serves reads too, under the same lock.
    """

    def __init__(self, path: str, *, readers: int = 4, busy_timeout_ms: int = 5000) -> None:
        self.path = path
        self.in_memory = path == ":memory:"
        self._reader_count = 0 if self.in_memory else readers
        self._busy_timeout_ms = busy_timeout_ms
        self._writer: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._readers: list[aiosqlite.Connection] = []
        self._idle_readers: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()

    async def open(self) -> None:
        """Open every connection and bring the schema up to date; on failure, close all."""
        if sqlite3.sqlite_version_info < MIN_SQLITE_VERSION:
            needed = ".".join(map(str, MIN_SQLITE_VERSION))
            raise DatabaseError(f"blog_api needs SQLite {needed} or newer; Python here has {sqlite3.sqlite_version}")
        try:
            self._writer = await self._connect()
            if not self.in_memory:
                await self._writer.execute("PRAGMA journal_mode = WAL")
            # Every acknowledged write survives a crash or power loss.
            await self._writer.execute("PRAGMA synchronous = FULL")
            await self._apply_schema()
            for _ in range(self._reader_count):
                reader = await self._connect()
                await reader.execute("PRAGMA query_only = ON")
                self._readers.append(reader)
                self._idle_readers.put_nowait(reader)
        except BaseException as exc:
            await self.close()
            if isinstance(exc, sqlite3.Error):
                raise DatabaseError(f"cannot use the database {self.path!r}: {exc}") from exc
            raise

    async def close(self) -> None:
        """Close every connection: each one's thread would otherwise keep the process alive.

        If closing is cancelled (a second Ctrl-C forces uvicorn out), the connections not yet
        reached are still told to stop, so no thread outlives the app.
        """
        connections = [*self._readers, *([self._writer] if self._writer else [])]
        self._readers, self._writer, self._idle_readers = [], None, asyncio.Queue()
        not_yet_closed = iter(connections)
        try:
            for connection in not_yet_closed:
                await connection.close()
        finally:
            for connection in not_yet_closed:
                connection.stop()

    async def _connect(self) -> aiosqlite.Connection:
        # isolation_level=None: no implicit transactions; we say BEGIN and COMMIT ourselves.
        connection = aiosqlite.connect(self.path, isolation_level=None)
        try:
            await connection
        except BaseException:
            # When the file cannot be opened, aiosqlite 0.22 stops its worker thread without
            # waiting for it, and the thread then reports to an event loop that may have closed
            # (omnilib/aiosqlite#389). Wait for it, so a failed start ends quietly.
            await asyncio.to_thread(connection._thread.join, 5)
            raise
        try:
            await connection.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
            await connection.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            await connection.close()
            raise
        return connection

    async def _apply_schema(self) -> None:
        """Apply schema.sql to a new database, accept a current one, refuse anything else."""
        statements = sql_statements(SCHEMA_PATH.read_text(encoding="utf-8"))
        async with self.transaction() as connection:
            [(version,)] = await connection.execute_fetchall("PRAGMA user_version")
            if version == SCHEMA_VERSION:
                return
            if version > SCHEMA_VERSION:
                raise DatabaseError(
                    f"the database {self.path!r} has schema version {version}, newer than this "
                    f"blog_api {__version__} knows ({SCHEMA_VERSION}); run a newer blog_api"
                )
            tables = [name for (name,) in await connection.execute_fetchall(SELECT_USER_TABLES)]
            if tables:
                raise DatabaseError(
                    f"the database {self.path!r} holds tables ({', '.join(tables)}) but no blog_api "
                    "schema version, so another program made it (the tutorial's SQLAlchemy app, "
                    "perhaps); refusing to guess at its layout. Use --db to choose another file."
                )
            for statement in statements:
                await connection.execute(statement)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """The writer connection inside ``BEGIN IMMEDIATE``: committed if the block ends
        normally, rolled back on any exception, cancellation included.

        The rollback is queued on the writer's thread after whatever the block had already
        sent, so it undoes all of it even if this task is cancelled mid-statement.
        """
        writer = self._require_writer()
        async with self._write_lock:
            try:
                await writer.execute("BEGIN IMMEDIATE")
                yield writer
                await writer.execute("COMMIT")
            except BaseException:
                await asyncio.shield(writer.rollback())
                raise

    async def fetch_all(self, sql: str, parameters: Sequence[Any] | Mapping[str, Any] = ()) -> list[Any]:
        """Run one read-only statement on an idle reader and return its rows."""
        if self.in_memory:
            async with self._write_lock:
                return await self._require_writer().execute_fetchall(sql, parameters)
        reader = await self._idle_readers.get()
        try:
            return await reader.execute_fetchall(sql, parameters)
        finally:
            self._idle_readers.put_nowait(reader)

    async def fetch_one(self, sql: str, parameters: Sequence[Any] | Mapping[str, Any] = ()) -> Any | None:
        rows = await self.fetch_all(sql, parameters)
        return rows[0] if rows else None

    def _require_writer(self) -> aiosqlite.Connection:
        if self._writer is None:
            raise DatabaseError("the database is not open")
        return self._writer


# Primary result codes that mean "the database cannot serve now", not "blog_api has a bug".
UNAVAILABLE_ERROR_CODES = {
    sqlite3.SQLITE_BUSY: "The database is busy; try again shortly",
    sqlite3.SQLITE_LOCKED: "The database is busy; try again shortly",
    sqlite3.SQLITE_FULL: "The database's disk is full",
    sqlite3.SQLITE_IOERR: "The database's disk failed to read or write",
    sqlite3.SQLITE_READONLY: "The database is read-only",
    sqlite3.SQLITE_CANTOPEN: "The database file cannot be opened",
}


# --------------------------------------------------------------------------------------
# Route handlers
# --------------------------------------------------------------------------------------


def post_not_found(post_id: str) -> NotFoundException:
    return NotFoundException(detail=f"Post with ID {post_id} not found")


@get("/", operation_id="welcome", summary="Welcome", tags=["meta"])
async def welcome() -> Welcome:
    """Says hello; useful to check that the service answers."""
    return Welcome(message="Welcome to the Blog API")


UPDATE_ROUTE: dict[str, Any] = {
    "path": "/{post_id:str}",
    "dto": StrictJSON[PostUpdate],
    "return_dto": None,
    "before_request": require_json_body,
    "raises": [NotFoundException, RequestEntityTooLarge, ServiceUnavailableException],
}
"""What PUT and PATCH share: they are one operation under two methods, as in the tutorial."""


class PostController(Controller):
    """Create, read, update and delete blog posts."""

    path = "/api/posts"
    tags: ClassVar[list[str]] = ["posts"]

    @post(
        dto=StrictJSON[PostCreate],
        return_dto=None,
        before_request=require_json_body,
        operation_id="createPost",
        summary="Create a post",
        raises=[RequestEntityTooLarge, ServiceUnavailableException],
        response_headers=[ResponseHeader(name="Location", description="URL of the new post.", documentation_only=True)],
    )
    async def create_post(self, data: JSONBody[PostCreate], db: NamedDependency[Database]) -> Response[Post]:
        """Create a post; answers 201 with the post and its URL in ``Location``."""
        now = utc_now_us()
        post_id = str(uuid.uuid4())
        async with db.transaction() as connection:
            await connection.execute(
                INSERT_POST,
                {"id": post_id, "title": data.title, "content": data.content, "published": data.published, "now": now},
            )
        created = post_from_row((post_id, data.title, data.content, now, now, data.published))
        return Response(created, status_code=201, headers={"Location": f"{self.path}/{post_id}"})

    @get(operation_id="listPosts", summary="List posts", raises=[ServiceUnavailableException])
    async def list_posts(self, db: NamedDependency[Database], published: PublishedFilter = None) -> list[Post]:
        """All posts, newest first; ``published=true|false`` keeps only posts or only drafts."""
        if published is None:
            rows = await db.fetch_all(SELECT_POSTS)
        else:
            rows = await db.fetch_all(SELECT_POSTS_BY_PUBLISHED, (published,))
        return [post_from_row(row) for row in rows]

    @get(
        "/{post_id:str}",
        operation_id="getPost",
        summary="Get a post",
        raises=[NotFoundException, ServiceUnavailableException],
    )
    async def get_post(self, post_id: PostId, db: NamedDependency[Database]) -> Post:
        """One post by its ID."""
        row = await db.fetch_one(SELECT_POST, (post_id,))
        if row is None:
            raise post_not_found(post_id)
        return post_from_row(row)

    @put(operation_id="updatePost", summary="Update a post", **UPDATE_ROUTE)
    async def update_post(self, post_id: PostId, data: JSONBody[PostUpdate], db: NamedDependency[Database]) -> Post:
        """Change the fields sent and leave the others; ``updated_at`` moves forward."""
        return await apply_update(db, post_id, data)

    @patch(operation_id="patchPost", summary="Update a post (the same as PUT)", **UPDATE_ROUTE)
    async def patch_post(self, post_id: PostId, data: JSONBody[PostUpdate], db: NamedDependency[Database]) -> Post:
        """The same as PUT: change the fields sent and leave the others."""
        return await apply_update(db, post_id, data)

    @delete(
        "/{post_id:str}",
        operation_id="deletePost",
        summary="Delete a post",
        raises=[NotFoundException, ServiceUnavailableException],
    )
    async def delete_post(self, post_id: PostId, db: NamedDependency[Database]) -> None:
        """Delete a post; answers 204 with no body."""
        async with db.transaction() as connection:
            deleted = await connection.execute_fetchall(DELETE_POST, (post_id,))
        if not deleted:
            raise post_not_found(post_id)


async def apply_update(db: Database, post_id: str, data: PostUpdate) -> Post:
    def sent(value: Any) -> Any:
        return None if value is UNSET else value

    parameters = {
        "id": post_id,
        "title": sent(data.title),
        "content": sent(data.content),
        "published": sent(data.published),
        "now": utc_now_us(),
    }
    async with db.transaction() as connection:
        rows = await connection.execute_fetchall(UPDATE_POST, parameters)
    if not rows:
        raise post_not_found(post_id)
    return post_from_row(rows[0])


def unavailable_reason(exc: BaseException) -> str | None:
    """Why the database cannot serve now, or None if ``exc`` is not that kind of error."""
    if not isinstance(exc, sqlite3.OperationalError):
        return None
    return UNAVAILABLE_ERROR_CODES.get(getattr(exc, "sqlite_errorcode", 0) & 0xFF)


def database_unavailable(request: Request, exc: sqlite3.OperationalError) -> Response:
    """A database that cannot serve now answers 503 (with ``Retry-After`` when busy);
    any other SQLite error is a bug and answers 500."""
    reason = unavailable_reason(exc)
    if reason is None:
        return Response({"status_code": 500, "detail": "Internal Server Error"}, status_code=500)
    request.logger.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc)
    busy = reason.startswith("The database is busy")
    return Response(
        {"status_code": HTTP_503_SERVICE_UNAVAILABLE, "detail": reason},
        status_code=HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": "1"} if busy else None,
    )


async def log_server_error(exc: Exception, scope: Scope) -> None:
    """Log every unexpected exception with its traceback, debug mode or not.

    Litestar logs exceptions only in debug mode by default, and with logging turned on it
    logs every 404 too. Client errors and a busy database are not bugs; everything else is.
    """
    if (isinstance(exc, HTTPException) and exc.status_code < 500) or unavailable_reason(exc):
        return
    scope["litestar_app"].logger.error(
        "Internal server error on %s %s", scope.get("method", ""), scope.get("path", ""), exc_info=exc
    )


# --------------------------------------------------------------------------------------
# The app factory
# --------------------------------------------------------------------------------------


class BlogAPI(Litestar):
    """Litestar, answering HEAD as GET without the body (RFC 9110 9.3.2) on every GET route.

    Litestar routes HEAD only to handlers declared for it, and its middleware runs after
    routing, so this happens at the ASGI entry point. It keeps one handler per resource and
    keeps HEAD out of the OpenAPI document, where it would only repeat GET.
    """

    async def __call__(self, scope: Any, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await super().__call__(scope, receive, send)
            return

        async def send_without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await super().__call__({**scope, "method": "GET"}, receive, send_without_body)


def provide_database(state: State) -> Database:
    return state.db


@asynccontextmanager
async def database_lifespan(app: Litestar) -> AsyncIterator[None]:
    """Open the database before the first request and always close it at shutdown."""
    config: Config = app.state.config
    db = Database(config.db_path, readers=config.readers, busy_timeout_ms=config.busy_timeout_ms)
    await db.open()
    app.state.db = db
    try:
        yield
    finally:
        await db.close()


def create_app(config: Config | None = None) -> Litestar:
    """A new app on ``config``'s database. Nothing is opened until the app starts."""
    config = config or Config()
    return BlogAPI(
        route_handlers=[welcome, PostController],
        dependencies={"db": Provide(provide_database, sync_to_thread=False)},
        lifespan=[database_lifespan],
        state=State({"config": config}),
        exception_handlers={sqlite3.OperationalError: database_unavailable},
        request_max_body_size=MAX_BODY_BYTES,
        after_exception=[log_server_error],
        logging_config=LoggingConfig(log_exceptions="never", configure_root_logger=False),
        openapi_config=OpenAPIConfig(
            title="Blog API",
            version=__version__,
            description="A blog's JSON API: posts with create, read, update and delete.",
            render_plugins=[
                SwaggerRenderPlugin(),
                RedocRenderPlugin(),
                ScalarRenderPlugin(),
                RapidocRenderPlugin(),
                StoplightRenderPlugin(),
                YamlRenderPlugin(),
            ],
        ),
        debug=False,
    )


app = create_app(Config.from_env())


# --------------------------------------------------------------------------------------
# main(): python blog_api.py
# --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None, environ: Mapping[str, str] = os.environ) -> Config:
    """Read the command line; each flag's default comes from its ``BLOG_API_*`` variable."""
    parser = argparse.ArgumentParser(
        prog="blog_api.py",
        description="Serve the blog API over HTTP with uvicorn.",
        epilog="Each flag can also be set by the environment variable named in its help.",
    )
    try:
        defaults = Config.from_env(environ)
    except ValueError as exc:
        parser.error(str(exc))
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
        "--readers",
        type=int,
        default=defaults.readers,
        help="reader connections in the pool (BLOG_API_READERS; default %(default)s)",
    )
    parser.add_argument(
        "--busy-timeout-ms",
        type=int,
        default=defaults.busy_timeout_ms,
        help="how long a write waits for a lock before answering 503 (BLOG_API_BUSY_TIMEOUT_MS; default %(default)s)",
    )
    args = parser.parse_args(argv)
    try:
        return Config(**vars(args))
    except ValueError as exc:
        parser.error(str(exc))


def base_url(config: Config) -> str:
    host = f"[{config.host}]" if ":" in config.host else config.host
    return f"http://{host}:{config.port}"


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_args(argv)
    url = base_url(config)
    print(f"Blog API {__version__} on {url} with database {config.db_path}", flush=True)
    print(f"API docs: {url}/schema/swagger (also /schema/redoc, /schema/openapi.json)", flush=True)
    server_options = {"host": config.host, "port": config.port, "log_level": config.log_level}
    if config.reload:
        # The reloader imports a fresh copy of this module, which reads its config from here.
        os.environ.update(config.to_env())
        code_dir = str(Path(__file__).resolve().parent)
        uvicorn.run("blog_api:app", reload=True, app_dir=code_dir, reload_dirs=[code_dir], **server_options)
    else:
        uvicorn.run(create_app(config), **server_options)


if __name__ == "__main__":
    sys.exit(main())
