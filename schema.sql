-- The schema of blog_api, applied by blog_api.py at startup inside one transaction.
--
-- Every statement is idempotent (IF NOT EXISTS), so applying this file twice is harmless.
-- The last line records the version in PRAGMA user_version; blog_api.SCHEMA_VERSION must
-- name the same number, and a database with any other version is upgraded or refused.
--
-- Needs SQLite 3.37 or newer (STRICT tables).

CREATE TABLE IF NOT EXISTS posts (
    -- A UUID4 made by the service, as the tutorial's model does. The table keeps its rowid
    -- (no WITHOUT ROWID) because a post's content can be many kilobytes.
    id          TEXT    NOT NULL PRIMARY KEY,
    title       TEXT    NOT NULL CHECK (length(title) BETWEEN 1 AND 100),
    content     TEXT    NOT NULL CHECK (length(content) >= 1),
    published   INTEGER NOT NULL DEFAULT 1 CHECK (published IN (0, 1)),
    -- Both timestamps are microseconds since the Unix epoch, UTC. Integers let an update
    -- move updated_at to max(now, updated_at + 1) in the same statement, so it strictly
    -- increases even when two updates land in the same microsecond.
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    CHECK (updated_at >= created_at)
) STRICT;

-- GET /api/posts: newest first, ties broken by id (read backwards through this index).
CREATE INDEX IF NOT EXISTS posts_by_created_at ON posts (created_at, id);

-- GET /api/posts?published=true|false: the same order within one value of published.
CREATE INDEX IF NOT EXISTS posts_by_published_created_at ON posts (published, created_at, id);

PRAGMA user_version = 1;
