-- The schema of blog_api, applied by blog_api.py at startup inside one transaction.
--
-- Every statement is idempotent (IF NOT EXISTS, OR IGNORE), so applying this file twice is
-- harmless. The last line records the version in PRAGMA user_version; blog_api.SCHEMA_VERSION
-- must name the same number, and a database with any other version is upgraded or refused.
--
-- Needs SQLite 3.37 or newer (STRICT tables) with FTS5, as Python 3.11's builds have.

CREATE TABLE IF NOT EXISTS posts (
    -- The rowid, made explicit so that VACUUM never renumbers it: posts_fts points at it.
    pk          INTEGER PRIMARY KEY,
    -- The public ID: a UUID4 made by the service, as the tutorial's model does.
    id          TEXT    NOT NULL UNIQUE,
    published   INTEGER NOT NULL DEFAULT 1 CHECK (published IN (0, 1)),
    -- Both timestamps are microseconds since the Unix epoch, UTC. Integers let an update
    -- move updated_at to max(now, updated_at + 1) in the same statement, so it strictly
    -- increases even when two updates land in the same microsecond.
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    -- When a comment was last added to or deleted from the post (0: never), set by the
    -- triggers on comments. What GET shows changed at the later of the two: Last-Modified.
    comments_changed_at  INTEGER NOT NULL DEFAULT 0,
    -- Bumped by the triggers below whenever what GET shows of the post changes: the
    -- strong ETag is made from id and version, and If-Match compares versions.
    version     INTEGER NOT NULL DEFAULT 1,
    -- How many comments the post has, kept by the triggers on comments: counted at each
    -- read, a post with 100,000 comments took 6 ms to read.
    comment_count  INTEGER NOT NULL DEFAULT 0,
    -- Made from the title (my-first-post, then my-first-post-2, ...) or chosen by the client.
    slug        TEXT    NOT NULL UNIQUE CHECK (length(slug) BETWEEN 1 AND 120),
    -- length() stops at a NUL character, which JSON text may hold: "not empty" is checked
    -- on the bytes (the service checks the exact character counts).
    title       TEXT    NOT NULL CHECK (length(CAST(title AS BLOB)) >= 1 AND length(title) <= 100),
    -- What ?sort=title orders by: the title casefolded, Latin letters without their accents
    -- (Émile as emile), made by blog_api (title_sort_key), which SQLite cannot (its NOCASE
    -- folds A to Z alone, so Émile came after zebra). '' until made: for a post another
    -- program wrote or retitled (see the trigger below), blog_api makes it when it next
    -- writes or starts.
    title_key   TEXT    NOT NULL DEFAULT '',
    -- Last, so that reading the columns above never walks a long post's overflow pages.
    content     TEXT    NOT NULL CHECK (length(CAST(content AS BLOB)) >= 1),
    CHECK (updated_at >= created_at)
) STRICT;

-- One index per order GET /api/posts can list in (read backwards for descending order),
-- and the same within one value of published. Ties are broken by id.
CREATE INDEX IF NOT EXISTS posts_by_created_at ON posts (created_at, id);
CREATE INDEX IF NOT EXISTS posts_by_updated_at ON posts (updated_at, id);
CREATE INDEX IF NOT EXISTS posts_by_title ON posts (title_key, id);
CREATE INDEX IF NOT EXISTS posts_by_published_created_at ON posts (published, created_at, id);
CREATE INDEX IF NOT EXISTS posts_by_published_updated_at ON posts (published, updated_at, id);
CREATE INDEX IF NOT EXISTS posts_by_published_title ON posts (published, title_key, id);
-- The drafts alone, by pk: whether each match of a search or of tags is a draft is looked up
-- here (0.3 µs), not in its row in posts (3 µs: the rows are large), for a reader who may not
-- see drafts. A blog's drafts are few, so this index is small.
CREATE INDEX IF NOT EXISTS posts_drafts ON posts (pk) WHERE published = 0;

-- A title changed without its key (by another program, or to one with the same key) is
-- given it anew.
CREATE TRIGGER IF NOT EXISTS posts_title_key_after_retitling AFTER UPDATE OF title ON posts
WHEN new.title IS NOT old.title AND new.title_key IS old.title_key
BEGIN
    UPDATE posts SET title_key = '' WHERE pk = new.pk;
END;

-- Full-text search over title and content (GET /api/posts?q=...). An external-content
-- table: it indexes the text but reads it from posts, so nothing is stored twice. Accents
-- are folded (cafe finds café); prefix indexes make two- and three-letter prefixes fast.
CREATE VIRTUAL TABLE IF NOT EXISTS posts_fts USING fts5(
    title,
    content,
    content = 'posts',
    content_rowid = 'pk',
    tokenize = 'unicode61 remove_diacritics 2',
    prefix = '2 3'
);

-- Results rank by bm25, with a word in the title worth four in the content.
INSERT INTO posts_fts (posts_fts, rank) VALUES ('rank', 'bm25(4.0, 1.0)');

-- Each write transaction adds its posts to the index as a b-tree of its own, which FTS5
-- merges with others of its level as more come. It begins once there are 'automerge' of
-- them on a level (FTS5's default: 4; at most 16) and does the work a little at a time, in
-- later writes; 'crisismerge' of them (default 16) are merged at once, in one write.
-- Merged 16 at a time, a post's entries are written again half as often as 4 at a time;
-- 'crisismerge' goes to 64 with it, or a level would be merged whole, in one write, as
-- soon as it had 16. At 100,000 posts created in batches of 32: 20% less CPU a create, a
-- batch's p99 halved; a search reads more b-trees, 0.05 to 0.3 ms more for rare words.
INSERT INTO posts_fts (posts_fts, rank) VALUES ('automerge', 16);
INSERT INTO posts_fts (posts_fts, rank) VALUES ('crisismerge', 64);

-- The posts whose text changed since posts_fts last indexed them, with what it holds for
-- each (NULL: nothing yet). The triggers below fill it on every write, by any program;
-- blog_api indexes them all and empties it at the end of each write transaction, just
-- before COMMIT, and when it starts (for what other programs wrote meanwhile).
--
-- Why not index each post in its own trigger: FTS5 writes its pending index to disk at
-- every statement savepoint, so that made one small segment per post, and more than
-- doubled the CPU a create costs. Indexed once per transaction, a batch of writes makes one.
CREATE TABLE IF NOT EXISTS posts_fts_pending (
    pk               INTEGER PRIMARY KEY,
    indexed_title    TEXT,
    indexed_content  TEXT
) STRICT;

-- Each keeps the first row for a post: what posts_fts held before this transaction began.
CREATE TRIGGER IF NOT EXISTS posts_fts_pending_after_insert AFTER INSERT ON posts BEGIN
    INSERT OR IGNORE INTO posts_fts_pending (pk) VALUES (new.pk);
END;

CREATE TRIGGER IF NOT EXISTS posts_fts_pending_after_delete AFTER DELETE ON posts BEGIN
    INSERT OR IGNORE INTO posts_fts_pending (pk, indexed_title, indexed_content)
    VALUES (old.pk, old.title, old.content);
END;

CREATE TRIGGER IF NOT EXISTS posts_fts_pending_after_update AFTER UPDATE OF title, content ON posts
WHEN old.title IS NOT new.title OR old.content IS NOT new.content
BEGIN
    INSERT OR IGNORE INTO posts_fts_pending (pk, indexed_title, indexed_content)
    VALUES (old.pk, old.title, old.content);
END;

-- Tags: a post has up to 10, normalised by the service (trimmed, lowercase), in the order
-- the client gave them. A tag no post uses any more is deleted with its last link.
CREATE TABLE IF NOT EXISTS tags (
    pk    INTEGER PRIMARY KEY,
    name  TEXT NOT NULL UNIQUE CHECK (length(CAST(name AS BLOB)) >= 1 AND length(name) <= 30),
    -- How many posts have the tag, and how many of them are published (GET /api/tags),
    -- kept by the triggers below as WordPress keeps its term counts. Counted at each
    -- request, they cost a read of every tagged post: 220 ms at 100,000 posts.
    post_count            INTEGER NOT NULL DEFAULT 0,
    published_post_count  INTEGER NOT NULL DEFAULT 0
) STRICT;

CREATE TABLE IF NOT EXISTS post_tags (
    post_pk   INTEGER NOT NULL REFERENCES posts (pk) ON DELETE CASCADE,
    tag_pk    INTEGER NOT NULL REFERENCES tags (pk),
    position  INTEGER NOT NULL,
    PRIMARY KEY (post_pk, tag_pk)
) STRICT, WITHOUT ROWID;

-- GET /api/posts?tag=...: the posts of a tag.
CREATE INDEX IF NOT EXISTS post_tags_by_tag ON post_tags (tag_pk, post_pk);

CREATE TRIGGER IF NOT EXISTS post_tags_drop_unused_tag AFTER DELETE ON post_tags
WHEN NOT EXISTS (SELECT 1 FROM post_tags WHERE tag_pk = old.tag_pk)
BEGIN
    DELETE FROM tags WHERE pk = old.tag_pk;
END;

-- The tags' counts follow their links, and whether each post is published.
CREATE TRIGGER IF NOT EXISTS post_tags_count_after_insert AFTER INSERT ON post_tags BEGIN
    UPDATE tags
    SET post_count = post_count + 1,
        published_post_count = published_post_count + (SELECT published FROM posts WHERE pk = new.post_pk)
    WHERE pk = new.tag_pk;
END;

CREATE TRIGGER IF NOT EXISTS post_tags_count_after_delete AFTER DELETE ON post_tags BEGIN
    UPDATE tags
    SET post_count = post_count - 1,
        published_post_count = published_post_count - (SELECT published FROM posts WHERE pk = old.post_pk)
    WHERE pk = old.tag_pk;
END;

CREATE TRIGGER IF NOT EXISTS posts_count_tags_after_publishing AFTER UPDATE OF published ON posts
WHEN new.published IS NOT old.published
BEGIN
    UPDATE tags
    SET published_post_count = published_post_count + (CASE WHEN new.published THEN 1 ELSE -1 END)
    WHERE pk IN (SELECT tag_pk FROM post_tags WHERE post_pk = new.pk);
END;

-- A deleted post's links go first, while the triggers above can still see the post
-- (ON DELETE CASCADE would take them once it is gone).
CREATE TRIGGER IF NOT EXISTS posts_untag_before_delete BEFORE DELETE ON posts BEGIN
    DELETE FROM post_tags WHERE post_pk = old.pk;
END;

-- A change of the post itself moves updated_at (the UPDATE statement decides when).
CREATE TRIGGER IF NOT EXISTS posts_bump_version AFTER UPDATE OF updated_at ON posts
WHEN new.updated_at IS NOT old.updated_at
BEGIN
    UPDATE posts SET version = old.version + 1 WHERE pk = new.pk;
END;

-- Comments belong to a post and go with it.
CREATE TABLE IF NOT EXISTS comments (
    pk          INTEGER PRIMARY KEY,
    id          TEXT    NOT NULL UNIQUE,
    post_pk     INTEGER NOT NULL REFERENCES posts (pk) ON DELETE CASCADE,
    created_at  INTEGER NOT NULL,
    author      TEXT    NOT NULL CHECK (length(CAST(author AS BLOB)) >= 1 AND length(author) <= 100),
    body        TEXT    NOT NULL CHECK (length(CAST(body AS BLOB)) >= 1 AND length(body) <= 10000)
) STRICT;

-- A post's comments, oldest first, and its comment_count.
CREATE INDEX IF NOT EXISTS comments_by_post ON comments (post_pk, created_at, id);

-- A comment changes its post's comment_count, so its representation: a new version, and
-- a new Last-Modified. A deletion has no time of its own: it takes SQLite's clock (to the
-- millisecond), in microseconds since the Unix epoch.
CREATE TRIGGER IF NOT EXISTS comments_bump_post_version_after_insert AFTER INSERT ON comments BEGIN
    UPDATE posts
    SET comment_count = comment_count + 1,
        version = version + 1,
        comments_changed_at = max(comments_changed_at, new.created_at)
    WHERE pk = new.post_pk;
END;

CREATE TRIGGER IF NOT EXISTS comments_bump_post_version_after_delete AFTER DELETE ON comments BEGIN
    UPDATE posts
    SET comment_count = comment_count - 1,
        version = version + 1,
        comments_changed_at = max(
            comments_changed_at,
            CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)
        )
    WHERE pk = old.post_pk;
END;

-- POST requests with an Idempotency-Key: the response given, replayed to a retry with the
-- same key and body. Written in the transaction of the write itself, kept at least 24 hours.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    route         TEXT    NOT NULL,  -- e.g. POST /api/posts
    key           TEXT    NOT NULL,
    request_hash  TEXT    NOT NULL,
    status        INTEGER NOT NULL,
    location      TEXT,
    body          BLOB    NOT NULL,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (route, key)
) STRICT;

CREATE INDEX IF NOT EXISTS idempotency_keys_by_age ON idempotency_keys (created_at);

-- Settings of this database. cursor_secret signs the page cursors of GET /api/posts, so a
-- cursor stays valid across restarts and between workers, and a forged one is refused.
CREATE TABLE IF NOT EXISTS meta (
    key    TEXT PRIMARY KEY,
    value  ANY NOT NULL
) STRICT;

INSERT OR IGNORE INTO meta (key, value) VALUES ('cursor_secret', randomblob(32));

PRAGMA user_version = 7;
