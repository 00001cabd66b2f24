"""Throughput benchmark: blog_api under wrk, against a bare Litestar app with the same routes.

    .venv/bin/python bench_throughput.py                # 3 rounds of 4 s a case (about 7 minutes)
    .venv/bin/python bench_throughput.py --duration 2 --rounds 1   # a quick look

It seeds a database with ``python blog_api.py seed``, then starts, each as its own process:

- ``python blog_api.py`` exactly as a user does (one worker, synchronous=full, access log on,
  uvicorn with uvloop and httptools, as requirements.txt installs it);
- the same with ``--synchronous off``, to show what durability costs;
- the same with ``--workers 2``, to show what a second process buys on this machine;
- the baseline: a bare Litestar app (this file, ``--serve-baseline``) with the same four
  routes, decoding the same request bodies with the same msgspec types and answering
  fixed posts read once from the seeded database. No database, no middleware: the
  ceiling of the framework under the same uvicorn;
- both again on uvicorn's pure-Python event loop and HTTP parser (``uvicorn blog_api:app
  --loop asyncio --http h11``), to show what uvloop and httptools buy, and the ratios there.

Each blog_api server is compared with the baseline on the same event loop and parser.

wrk (installed with apt-get if missing) drives each at 32 connections on 127.0.0.1 for
GET one post, GET a page of 20 (also with a browser's ``Accept-Encoding: br``), POST create
and PUT update. The rounds alternate between
the servers, so noise from other work on the machine falls on all of them alike; the
table gives medians over the rounds. Peak RSS is each server's VmHWM (summed over worker
processes) at the end. Everything stops by itself and is removed at the end.
"""

import argparse
import os
import re
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

HERE = Path(__file__).parent
BLOG_API = HERE / "blog_api.py"
CONNECTIONS = 32
PURE_PYTHON = ("--loop", "asyncio", "--http", "h11")
"""uvicorn's options for its pure-Python event loop and HTTP parser."""
TARGETS = {"GET one": 0.65, "GET page of 20": 0.50, "POST create": 0.50, "PUT update": 0.50}
"""Issue 8's targets: each case's req/s as a share of the baseline's."""
SEEDED_POSTS = 2000
CASES = ("GET one", "GET page of 20", "GET page of 20, br", "GET 50 pages of 20", "POST create", "PUT update")
CASE_HEADERS = {"GET page of 20, br": ("Accept-Encoding: br",)}
"""What a case sends besides its script's requests: a browser's Accept-Encoding (brotli, as
blog_api prefers it). The baseline has no compression, and answers the page as it is."""
JSON_HEADERS = '{["Content-Type"] = "application/json"}'

# wrk scripts. Each request differs: GETs and PUTs walk over the seeded posts; POSTs make
# posts with new titles (so their slugs never collide); %(ids)s and %(content)s are filled in.
GET_ONE_LUA = """
ids = {%(ids)s}
n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/api/posts/" .. ids[n %% #ids + 1])
end
"""
# The same page by every connection (a blog's front page) favours coalescing; this walks
# 50 different pages, so that concurrent requests seldom ask for the same one.
PAGES_LUA = """
n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/api/posts?offset=" .. (n %% 50) * 20)
end
"""
POST_LUA = """
n = 0
run = "%(run)s"
request = function()
  n = n + 1
  local title = "Benchmark post " .. run .. " " .. n
  local body = '{"title": "' .. title .. '", "content": "%(content)s", "tags": ["bench", "wrk"]}'
  return wrk.format("POST", "/api/posts", %(headers)s, body)
end
"""
PUT_LUA = """
ids = {%(ids)s}
n = 0
run = "%(run)s"
request = function()
  n = n + 1
  local body = '{"title": "Edited ' .. run .. ' ' .. n .. '", "content": "%(content)s"}'
  return wrk.format("PUT", "/api/posts/" .. ids[n %% #ids + 1], %(headers)s, body)
end
"""


# --------------------------------------------------------------------------------------
# The baseline: bare Litestar, the same routes, fixed answers
# --------------------------------------------------------------------------------------


def serve_baseline(db_path: str, port: int, pure_python: bool) -> None:
    """Serve the four routes with no database: posts are read once, at startup."""
    import msgspec
    import uvicorn
    from litestar import Litestar, Response, get, post, put

    import blog_api

    connection = sqlite3.connect(db_path)
    query = f"SELECT {blog_api.POST_FIELDS} FROM posts WHERE published ORDER BY created_at DESC LIMIT 20"
    rows = connection.execute(query).fetchall()
    connection.close()
    posts = [msgspec.json.decode(row[-1], type=blog_api.Post) for row in rows]

    @get("/api/posts/{post_id:str}")
    async def get_post(post_id: str) -> blog_api.Post:
        return posts[0]

    @get("/api/posts")
    async def list_posts() -> Response[list[blog_api.Post]]:
        return Response(posts, headers={"X-Total-Count": str(SEEDED_POSTS)})

    @post("/api/posts")
    async def create_post(data: blog_api.PostCreate) -> blog_api.Post:
        return posts[0]

    @put("/api/posts/{post_id:str}")
    async def update_post(post_id: str, data: blog_api.PostUpdate) -> blog_api.Post:
        return posts[0]

    app = Litestar([get_post, list_posts, create_post, update_post])
    stack = {"loop": "asyncio", "http": "h11"} if pure_python else {}
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, **stack)


# --------------------------------------------------------------------------------------
# Running servers and wrk
# --------------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    command: list[str]
    port: int
    log: Path
    baseline: "Server | None" = None
    """The baseline on the same event loop and HTTP parser (None: this is a baseline)."""
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    results: dict[str, list["Result"]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, cwd=HERE, env={**os.environ, **self.env}
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                sys.exit(f"{self.name} ended at start:\n{self.log.read_text()}")
            try:
                httpx.get(f"{self.url}/api/posts?limit=1", timeout=1).raise_for_status()
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        sys.exit(f"{self.name} did not start within 30 s:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def peak_rss_mb(self) -> float:
        """VmHWM of the server and its worker processes, summed."""
        assert self.process is not None
        return sum(peak_rss_kb(pid) for pid in process_tree(self.process.pid)) / 1024


def process_tree(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *(grandchild for child in children for grandchild in process_tree(int(child)))]


def peak_rss_kb(pid: int) -> int:
    match = re.search(r"^VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
    return int(match.group(1)) if match else 0


@dataclass
class Result:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int


def run_wrk(url: str, script: Path | None, duration: float, headers: tuple[str, ...] = ()) -> Result:
    command = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{duration:g}s", "--latency", url]
    if script is not None:
        command[-1:-1] = ["-s", str(script)]
    for header in headers:
        command[-1:-1] = ["-H", header]
    output = subprocess.run(command, capture_output=True, text=True, check=True, timeout=duration + 60).stdout
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    errors = int(non_2xx.group(1)) if non_2xx else 0
    errors += sum(map(int, socket_errors.groups())) if socket_errors else 0
    return Result(
        requests_per_second=float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
        p50_ms=wrk_ms(re.search(r"^\s+50%\s+(\S+)", output, re.MULTILINE).group(1)),
        p99_ms=wrk_ms(re.search(r"^\s+99%\s+(\S+)", output, re.MULTILINE).group(1)),
        errors=errors,
    )


def wrk_ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def ensure_wrk() -> None:
    if shutil.which("wrk"):
        return
    print("wrk is missing: installing it with apt-get (Debian's package)", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def seeded_ids(db_path: Path) -> list[str]:
    connection = sqlite3.connect(db_path)
    ids = [row[0] for row in connection.execute("SELECT id FROM posts WHERE published ORDER BY pk")]
    connection.close()
    return ids


def write_scripts(directory: Path, ids: list[str], content: str) -> dict[str, Path | None]:
    values = {
        "ids": ", ".join(f'"{post_id}"' for post_id in ids),
        "run": uuid.uuid4().hex[:8],
        "content": content,
        "headers": JSON_HEADERS,
    }
    scripts = {"GET one": GET_ONE_LUA, "GET 50 pages of 20": PAGES_LUA, "POST create": POST_LUA, "PUT update": PUT_LUA}
    paths: dict[str, Path | None] = {"GET page of 20": None, "GET page of 20, br": None}
    for case, template in scripts.items():
        path = directory / f"{case.replace(' ', '_')}.lua"
        path.write_text(template % values)
        paths[case] = path
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=4, help="seconds of load per case and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the table gives medians")
    parser.add_argument("--serve-baseline", metavar="DB", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--pure-python", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_baseline:
        serve_baseline(args.serve_baseline, args.port, args.pure_python)
        return
    ensure_wrk()
    with tempfile.TemporaryDirectory(prefix="blog_api_bench_") as tmp:
        run_benchmark(Path(tmp), args.duration, args.rounds)


def run_benchmark(tmp: Path, duration: float, rounds: int) -> None:
    seeded = tmp / "seeded.db"
    subprocess.run(
        [sys.executable, BLOG_API, "seed", "--db", seeded, "--posts", str(SEEDED_POSTS)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    ids = seeded_ids(seeded)
    content = "A benchmark post of a typical length. " * 20
    scripts = write_scripts(tmp, ids, content)

    def log_file(name: str) -> Path:
        return tmp / f"{name.replace(' ', '_')}.log"

    def baseline(name: str, *flags: str) -> Server:
        port = free_port()
        command = [sys.executable, __file__, "--serve-baseline", str(seeded), "--port", str(port), *flags]
        return Server(name, command, port, log_file(name))

    def service(name: str, baseline: Server, *flags: str) -> Server:
        db = tmp / f"{name.replace(' ', '_')}.db"
        shutil.copy(seeded, db)
        port = free_port()
        command = [sys.executable, str(BLOG_API), "--db", str(db), "--port", str(port), *flags]
        return Server(name, command, port, log_file(name), baseline)

    def service_under_uvicorn(name: str, baseline: Server, *options: str) -> Server:
        """``uvicorn blog_api:app``, configured by BLOG_API_* variables, as the README shows."""
        db = tmp / f"{name.replace(' ', '_')}.db"
        shutil.copy(seeded, db)
        port = free_port()
        command = [sys.executable, "-m", "uvicorn", "blog_api:app", "--port", str(port), "--no-access-log", *options]
        return Server(name, command, port, log_file(name), baseline, env={"BLOG_API_DB": str(db)})

    fast_baseline = baseline("baseline")
    pure_python_baseline = baseline("baseline, pure Python", "--pure-python")
    servers = [
        fast_baseline,
        service("blog_api", fast_baseline),
        service("synchronous off", fast_baseline, "--synchronous", "off"),
        service("2 workers", fast_baseline, "--workers", "2"),
        pure_python_baseline,
        service_under_uvicorn("blog_api, pure Python", pure_python_baseline, *PURE_PYTHON),
    ]
    print(
        f"{SEEDED_POSTS} seeded posts; wrk -t1 -c{CONNECTIONS} -d{duration:g}s on 127.0.0.1; "
        f"{rounds} rounds; {os.cpu_count()} cores; Python {sys.version.split()[0]}",
        flush=True,
    )
    try:
        for server in servers:
            server.start()
        for round_number in range(1, rounds + 1):
            for case in CASES:
                for server in servers:
                    result = run_wrk(f"{server.url}/api/posts", scripts[case], duration, CASE_HEADERS.get(case, ()))
                    server.results.setdefault(case, []).append(result)
            print(f"round {round_number} of {rounds} done", flush=True)
        peak_rss = {server.name: server.peak_rss_mb() for server in servers}
    finally:
        for server in servers:
            server.stop()
    print_table(servers, peak_rss)


def median_rps(server: Server, case: str) -> float:
    return statistics.median(r.requests_per_second for r in server.results[case])


def against_target(ratio: float, target: float) -> str:
    """``0.66 (target 0.65: met)``; with a third decimal where two would round onto the
    target and hide which side of it the ratio is (``0.896 (target 0.90: not met)``)."""
    verdict = "met" if ratio >= target else "not met"
    shown = f"{ratio:.3f}" if f"{ratio:.2f}" == f"{target:.2f}" else f"{ratio:.2f}"
    return f"{shown} (target {target:.2f}: {verdict})"


def print_table(servers: list[Server], peak_rss: dict[str, float]) -> None:
    print()
    print("| case | server | req/s | p50 ms | p99 ms | errors | ratio to its baseline |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for case in CASES:
        for server in servers:
            results = server.results[case]
            rps = median_rps(server, case)
            p50 = statistics.median(r.p50_ms for r in results)
            p99 = statistics.median(r.p99_ms for r in results)
            errors = sum(r.errors for r in results)
            ratio = rps / median_rps(server.baseline or server, case)
            print(f"| {case} | {server.name} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {errors} | {ratio:.2f} |")
    by_name = {server.name: server for server in servers}
    blog, pure_python = by_name["blog_api"], by_name["blog_api, pure Python"]
    print()
    print("Issue 8's targets, blog_api (one worker) as a share of its baseline:")
    for case, target in TARGETS.items():
        for server in (blog, pure_python):
            ratio = median_rps(server, case) / median_rps(server.baseline or server, case)
            print(f"  {case}, {server.name}: {against_target(ratio, target)}")
    two_workers = by_name["2 workers"]
    shares = ", ".join(
        f"{case} {median_rps(two_workers, case) / median_rps(two_workers.baseline, case):.2f}"
        for case in ("POST create", "PUT update")
    )
    print(f"  writes with --workers 2, for comparison: {shares}")
    full, off = median_rps(blog, "POST create"), median_rps(by_name["synchronous off"], "POST create")
    print(f"  POST with synchronous=full / off: {against_target(full / off, 0.90)}")
    print(f"  peak RSS of blog_api under load: {peak_rss['blog_api']:.0f} MB (target < 100 MB)")
    compressed, plain = median_rps(blog, "GET page of 20, br"), median_rps(blog, "GET page of 20")
    print(f"  a page of 20 in brotli, blog_api: {compressed / plain:.2f} of its rate for the page as it is")
    gains = ", ".join(f"{case} {median_rps(blog, case) / median_rps(pure_python, case):.2f}x" for case in TARGETS)
    print(f"uvloop and httptools, blog_api's req/s against the pure-Python stack: {gains}")
    print("Peak RSS (VmHWM, MB): " + ", ".join(f"{name} {mb:.0f}" for name, mb in peak_rss.items()))


if __name__ == "__main__":
    main()
