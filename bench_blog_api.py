"""Benchmark of GET /api/posts at scale: seeds a database (posts, tags, comments), starts ``python blog_api.py`` as a
user would, and prints p50/p99 latency of each kind of listing, one request at a time: read from SQLite (another
program writes to the database before each request, so the read cache empties), and from the read cache.

    .venv/bin/python bench_blog_api.py                 # 100,000 posts, 300 requests a case
    .venv/bin/python bench_blog_api.py --posts 20000   # quicker

Only 127.0.0.1 is contacted; the server is stopped and the database removed at the end.
"""

import argparse
import asyncio
import random
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import closing
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx

import blog_api

HERE = Path(__file__).parent
WORD = "litestar"  # in 2% of posts: a typical search
RARE_WORD = "zanzibar"  # in 10 posts
COMMON_WORD = "the"  # in about half the posts: the worst case for ranking, not a target
TAG = "python"  # on 10% of posts
OTHER_TAG = "topic-1"  # on about 15% of posts
TAG_NAMES = [f"topic-{n}" for n in range(60)]  # the other tags, Zipf-like


def vocabulary(rng: random.Random, size: int = 3000) -> list[str]:
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "qui", "dra", "fen", "gor", "hul"]
    words = {"".join(rng.choices(syllables, k=rng.randint(2, 4))) for _ in range(size * 2)}
    return sorted(words)[:size]


def seed(db_path: Path, posts: int, rng: random.Random) -> None:
    """Make the schema with blog_api's own code, then insert every post in one transaction."""

    async def make_schema() -> None:
        db = blog_api.Database(str(db_path))
        await db.open()
        await db.close()

    asyncio.run(make_schema())
    words = vocabulary(rng)
    weights = [1 / (rank + 1) for rank in range(len(words))]  # Zipf-like, as in real text
    start = 1_700_000_000_000_000
    rare = set(rng.sample(range(posts), 10))

    def tags_of(n: int) -> list[str]:
        tags = [TAG] if rng.random() < 0.1 else []
        tags += rng.choices(TAG_NAMES, [1 / (rank + 1) for rank in range(len(TAG_NAMES))], k=rng.randint(0, 3))
        return list(dict.fromkeys(tags))

    post_tags = []
    comments = []

    def rows():
        for n in range(posts):
            title = " ".join(rng.choices(words, weights, k=rng.randint(3, 8))).capitalize()
            body = rng.choices(words, weights, k=rng.randint(40, 120))
            if rng.random() < 0.02:
                body.insert(rng.randrange(len(body)), WORD)
            if rng.random() < 0.5:
                body.insert(rng.randrange(len(body)), COMMON_WORD)
            if n in rare:
                body.insert(rng.randrange(len(body)), RARE_WORD)
            created = start + n * 1_000_000 + rng.randrange(1_000_000)
            published = int(rng.random() >= 0.1)
            post_tags.extend((n + 1, name, position) for position, name in enumerate(tags_of(n)))
            if rng.random() < 0.3:
                for minute in range(rng.randint(1, 3)):
                    comments.append((str(uuid.uuid4()), n + 1, created + minute * 60_000_000, "reader", "Nice post."))
            post_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            yield n + 1, post_id, f"post-{n + 1}", title, " ".join(body), published, created

    with closing(sqlite3.connect(db_path, isolation_level=None)) as connection:
        connection.execute("PRAGMA synchronous = OFF")
        connection.execute("BEGIN")
        connection.executemany(
            "INSERT INTO posts (pk, id, slug, title, content, published, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?7)",
            rows(),
        )
        connection.executemany("INSERT INTO tags (name) VALUES (?)", [(name,) for name in [TAG, *TAG_NAMES]])
        connection.executemany(
            "INSERT INTO post_tags (post_pk, tag_pk, position) SELECT ?, pk, ? FROM tags WHERE name = ?",
            [(post_pk, position, name) for post_pk, name, position in post_tags],
        )
        connection.executemany(
            "INSERT INTO comments (id, post_pk, created_at, author, body) VALUES (?, ?, ?, ?, ?)", comments
        )
        connection.execute("DELETE FROM tags WHERE pk NOT IN (SELECT tag_pk FROM post_tags)")
        connection.execute("COMMIT")
        connection.execute("PRAGMA optimize")
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(db_path: Path, port: int) -> subprocess.Popen:
    command = [sys.executable, "blog_api.py", "--port", str(port), "--db", str(db_path), "--log-level", "warning"]
    server = subprocess.Popen(command, cwd=HERE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.1)
    server.kill()
    raise SystemExit(f"the server did not start: {server.stderr.read().decode()}")


BUMP_BENCH_COUNTER = """
INSERT INTO meta (key, value) VALUES ('bench_changes', 1)
ON CONFLICT (key) DO UPDATE SET value = value + 1
"""


def measure(
    client: httpx.Client, url: str, requests: int, other_program: sqlite3.Connection | None
) -> tuple[list[float], httpx.Response]:
    """Times of ``requests`` GETs of ``url``, after a few untimed ones. With ``other_program``,
    a write to the database comes before each (untimed), as another program's would: blog_api's
    read cache sees the database change and empties, so each answer is read from SQLite, as
    the first after any write is. Without, every timed answer comes from the cache."""
    for _ in range(max(5, requests // 10)):  # warm SQLite's page cache and the OS's
        response = client.get(url)
    timings = []
    for _ in range(requests):
        if other_program is not None:
            other_program.execute(BUMP_BENCH_COUNTER)
        started = time.perf_counter()
        response = client.get(url)
        timings.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise SystemExit(f"{url} answered {response.status_code}: {response.text[:200]}")
    return timings, response


def cursor_at(client: httpx.Client, position: int) -> str:
    """The cursor of the page that starts at ``position``: the next link of the page before."""
    link = client.get("/api/posts", params={"offset": position - 20}).headers["link"]
    next_url = next(part for part in link.split(", ") if 'rel="next"' in part).split(">")[0].lstrip("<")
    return parse_qs(urlsplit(next_url).query)["cursor"][0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--posts", type=int, default=100_000, help="posts to seed (default %(default)s)")
    parser.add_argument("--requests", type=int, default=300, help="timed requests per case (default %(default)s)")
    parser.add_argument("--random-seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.random_seed)

    with tempfile.TemporaryDirectory(prefix="blog_api_bench_") as folder:
        db_path = Path(folder) / "bench.db"
        started = time.perf_counter()
        seed(db_path, args.posts, rng)
        print(f"seeded {args.posts:,} posts in {time.perf_counter() - started:.1f} s", flush=True)
        port = free_port()
        server = start_server(db_path, port)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                middle = args.posts // 2
                cases = [
                    ("page 1", "/api/posts"),
                    ("?published=true (page 1 as a reader without the token sees it)", "/api/posts?published=true"),
                    (f"page at {middle:,} by cursor", f"/api/posts?cursor={cursor_at(client, middle)}"),
                    (f"page at {middle:,} by offset", f"/api/posts?offset={middle}"),
                    ("?published=false", "/api/posts?published=false"),
                    (f"?q={WORD}", f"/api/posts?q={WORD}"),
                    (
                        f"?q={WORD}&published=true (as a reader without the token sees it)",
                        f"/api/posts?q={WORD}&published=true",
                    ),
                    (f"?q={RARE_WORD} (rare)", f"/api/posts?q={RARE_WORD}"),
                    (f"?tag={TAG}", f"/api/posts?tag={TAG}"),
                    (f"?q={WORD}&tag={TAG} (a search within a tag)", f"/api/posts?q={WORD}&tag={TAG}"),
                    (f"?tag={TAG}&tag={OTHER_TAG} (posts with both)", f"/api/posts?tag={TAG}&tag={OTHER_TAG}"),
                    (f"?q={COMMON_WORD} (in half the posts; not a target)", f"/api/posts?q={COMMON_WORD}"),
                    (
                        f"?q={COMMON_WORD}&sort=created_at (the same, by date)",
                        f"/api/posts?q={COMMON_WORD}&sort=created_at",
                    ),
                ]
                results = []
                with closing(sqlite3.connect(db_path, isolation_level=None)) as other_program:
                    for name, url in cases:
                        timings, response = measure(client, url, args.requests, other_program)
                        cached, _ = measure(client, url, args.requests, None)
                        results.append((name, timings, cached, response.headers["x-total-count"]))
        finally:
            server.terminate()
            server.wait(timeout=15)

    page_one = statistics.median(results[0][1])
    print(f"\n{args.posts:,} posts, {args.requests} sequential requests per case, 20 posts a page, 127.0.0.1")
    print("read from SQLite: another program writes to the database before each request, emptying the read cache\n")
    print("| case | matches | p50 ms | p99 ms | p50 / page 1 | p50 ms from the read cache |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, timings, cached, total in results:
        p50 = statistics.median(timings)
        p99 = statistics.quantiles(timings, n=100)[98]
        from_cache = statistics.median(cached)
        print(f"| {name} | {int(total):,} | {p50:.2f} | {p99:.2f} | {p50 / page_one:.2f} | {from_cache:.2f} |")


if __name__ == "__main__":
    main()
