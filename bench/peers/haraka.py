"""Haraka as a peer of the benchmark: a pinned release from the npm
registry, installed under the tools directory (never globally), one private
instance per run: a fresh `haraka -i` skeleton (Haraka's stock
connection.ini and friends, which it reads without defaults of its own)
whose smtp.ini, log.ini, me and plugins list are replaced (outbound.ini
and queue_dir added), and a fresh queue directory. It listens on
127.0.0.1 only, without TLS (it still logs, once at start, that it has no
TLS key), logs at `warn` to its stdout (a file), and runs only these
plugins, written here into the skeleton's plugins/ directory:

- `bench_relay`: answers the lookup_rdns hook itself (Haraka would
  otherwise send a PTR query for 127.0.0.1 to the system's resolver) and
  sets `connection.relaying` for clients in 127.0.0.0/8;
- "accept": `bench_queue`, on the queue and queue_outbound hooks: writes
  the message (transaction.message_stream) to `<uuid>.tmp` in the queue
  directory, fsyncs the file, renames it to `<uuid>.eml`, fsyncs the
  directory, and only then answers OK (250). Haraka has no durable inbound
  queue of its own; this makes it as durable as Postfix and weir.
- "relay": Haraka's own outbound queue (relaying clients go to it when no
  queue_outbound plugin takes the message), with `bench_mx` answering the
  get_mx hook with 127.0.0.1:<sink port>, so there is no MX or A lookup;
  `outbound.ini` concurrency_max caps the connections to the sink at
  `sessions`, STARTTLS off. Outbound writes each queue file through
  haraka-utils' FsyncWriteStream (fsync before close), renames it from
  `__tmp__.<name>` and only then answers 250; it does not fsync the
  directory. It opens a new connection per delivery (no connection reuse).

No other plugin (no DNS lists, rDNS/FCrDNS, SPF, DKIM, TLS, access,
karma...), so nothing looks anything up in DNS for bench.test.

Process model: one Node process (`nodes=0` in smtp.ini), chosen by
measurement on this 2-core machine (accept, 4 KiB, 2,000 messages, medians
of three alternating runs): one process 828 msg/s at 20 sessions and 811
at 100; cluster mode with `nodes=2` (a master and two workers) 681 and
696; cluster mode with NODE_CLUSTER_SCHED_POLICY=none (the kernel, not the
master, spreads the connections) 768-801. With 100 KiB messages cluster
mode is ahead by 3-6% (398 against 375 msg/s at 20 sessions, 385 against
375 at 100); in the relay workload one process is ahead again (349
against 309-320 msg/s).
One process is CPU-bound (about 1.6 ms of CPU per 4 KiB message), and
smtp-source needs the other core; a second worker competes with it, and
the default cluster scheduling adds the master's hand-off of every
connection. NODES below switches it (outbound's concurrency_max is then
split among the workers).
"""

import json
import os
import shutil
import subprocess

from . import common

VERSION = "3.3.4"  # the newest Haraka on npm; needs Node >= 20 (here: 20)
NODES = 0          # 0: one process; N: cluster mode with N workers

# Answers lookup_rdns (no PTR query) and lets loopback clients relay.
RELAY_JS = r"""'use strict'
exports.register = function () {
    this.register_hook('lookup_rdns', 'rdns')
    this.register_hook('connect', 'acl')
}
exports.rdns = function (next, connection) {
    next(OK, 'localhost')
}
exports.acl = function (next, connection) {
    if (/^(::ffff:)?127\./.test(connection.remote.ip)) connection.relaying = true
    next()
}
"""

# Accept mode: each message to a file, fsynced (file and directory) before OK.
QUEUE_JS = r"""'use strict'
const fs = require('node:fs')
const path = require('node:path')

const DIR = __DIR__
let dirfd = null

// A WriteStream that fsyncs the file before its fd is closed (as Haraka's
// outbound does with haraka-utils' FsyncWriteStream).
class FsyncWriteStream extends fs.WriteStream {
    _destroy(err, cb) {
        if (err || typeof this.fd !== 'number') return super._destroy(err, cb)
        fs.fsync(this.fd, (e) => super._destroy(e, cb))
    }
}

exports.register = function () {
    dirfd = fs.openSync(DIR, 'r')
    this.register_hook('queue', 'write')
    this.register_hook('queue_outbound', 'write')
}

exports.write = function (next, connection) {
    const txn = connection.transaction
    const tmp = path.join(DIR, `${txn.uuid}.tmp`)
    const dest = path.join(DIR, `${txn.uuid}.eml`)
    let done = false
    const fail = (err) => {
        if (done) return
        done = true
        connection.logerror(this, `queue write failed: ${err}`)
        fs.unlink(tmp, () => {})
        next(DENYSOFT, 'queue write failed')
    }
    const ws = new FsyncWriteStream(tmp, { flags: 'wx' })
    ws.on('error', fail)
    ws.on('close', () => {
        if (done) return
        fs.rename(tmp, dest, (err) => {
            if (err) return fail(err)
            fs.fsync(dirfd, (err2) => {
                if (err2) return fail(err2)
                done = true
                next(OK, `Queued as ${txn.uuid}`)
            })
        })
    })
    txn.message_stream.pipe(ws, { dot_stuffed: false })
}
"""

# Relay mode: the sink is every domain's only MX.
MX_JS = r"""'use strict'
exports.hook_get_mx = function (next, hmail, domain) {
    next(OK, { exchange: '127.0.0.1', port: __PORT__, priority: 0 })
}
"""


class Haraka:
    durability = (
        "accept: the benchmark's queue plugin fsyncs each message file, renames it into place "
        "and fsyncs the directory before the 250; relay: outbound fsyncs each queue file "
        "(haraka-utils' FsyncWriteStream) before the 250, but not the directory after its rename"
    )

    def __init__(self, workdir: str, tools_dir: str, nodes: int | None = None):
        self.workdir = workdir
        self.prefix = os.path.join(tools_dir, "haraka")
        self.pkg = os.path.join(self.prefix, "node_modules", "Haraka")
        self.nodes = NODES if nodes is None else nodes
        self.root = os.path.join(workdir, "haraka")  # haraka -c: config/ and plugins/
        self.queue = os.path.join(workdir, "queue")
        self.log = os.path.join(workdir, "haraka.log")
        self.proc: subprocess.Popen | None = None
        self.mode = "accept"
        self.name = f"haraka {VERSION}"

    def _installed(self) -> str | None:
        try:
            with open(os.path.join(self.pkg, "package.json")) as f:
                return json.load(f).get("version")
        except (OSError, ValueError):
            return None

    def install(self) -> None:
        if self._installed() != VERSION:
            os.makedirs(self.prefix, exist_ok=True)
            # --omit=optional: the optional plugins are not used, and one of
            # them (syslog) pulls in modern-syslog, a native addon whose
            # node-gyp build would fetch Node's headers from nodejs.org.
            subprocess.run(
                ["/usr/bin/npm", "install", "--prefix", self.prefix, "--omit=optional",
                 "--no-audit", "--no-fund", "--save-exact", "--loglevel=error",
                 f"Haraka@{VERSION}"],
                check=True, stdin=subprocess.DEVNULL)
        version = self._installed()
        if version != VERSION:
            raise RuntimeError(f"Haraka {VERSION} not installed in {self.prefix} (found {version})")
        self.name = f"haraka {version}"

    def _configure(self, mode: str, port: int, sessions: int, sink_port: int | None) -> None:
        # The skeleton: config/ with Haraka's defaults (connection.ini, which
        # Haraka reads without defaults of its own, and others), plugins/.
        subprocess.run(["/usr/bin/node", os.path.join(self.pkg, "bin", "haraka"), "-i", self.root],
                       check=True, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)

        def write(name: str, text: str) -> None:
            where = name if name.startswith("plugins/") else os.path.join("config", name)
            with open(os.path.join(self.root, where), "w") as f:
                f.write(text)

        write("smtp.ini", f"""[main]
listen=127.0.0.1:{port}
nodes={self.nodes}
daemonize=false
graceful_shutdown=false
force_shutdown_timeout=5
inactivity_timeout=300
""")
        write("log.ini", "[main]\nlevel=warn\ntimestamps=true\nformat=default\n")
        write("me", "bench.localdomain\n")
        plugins = ["bench_relay"]
        write("plugins/bench_relay.js", RELAY_JS)
        if mode == "relay":
            # concurrency_max counts per process: split it among the workers.
            per = max(1, -(-sessions // self.nodes)) if self.nodes else sessions
            write("outbound.ini", f"""[main]
concurrency_max={per}
enable_tls=false
always_split=false
inet_prefer=v4
""")
            write("queue_dir", self.queue + "\n")
            write("plugins/bench_mx.js", MX_JS.replace("__PORT__", str(int(sink_port))))
            plugins.append("bench_mx")
        else:
            write("outbound.ini", "[main]\nenable_tls=false\n")
            # Outbound's own (unused) queue: out of the way of the count.
            write("queue_dir", os.path.join(self.workdir, "outbound-unused") + "\n")
            write("plugins/bench_queue.js", QUEUE_JS.replace("__DIR__", json.dumps(self.queue)))
            plugins.append("bench_queue")
        write("plugins", "\n".join(plugins) + "\n")

    def start(self, mode: str, port: int, sessions: int, sink_port: int | None = None) -> None:
        self.stop()
        self.mode = mode
        for d in (self.root, self.queue, os.path.join(self.workdir, "outbound-unused")):
            shutil.rmtree(d, ignore_errors=True)
        os.makedirs(self.queue)
        self._configure(mode, port, sessions, sink_port)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HARAKA", "NODE_"))}
        env["NODE_ENV"] = "production"
        self.proc = subprocess.Popen(
            ["bash", "-c", 'ulimit -n "$(ulimit -Hn)"; exec /usr/bin/node "$0" -c "$1"',
             os.path.join(self.pkg, "bin", "haraka"), self.root],
            stdin=subprocess.DEVNULL, stdout=open(self.log, "w"), stderr=subprocess.STDOUT,
            env=env, cwd=self.workdir, start_new_session=True)
        common.wait_port(port, lambda: self.proc.poll() is None, 30, "haraka", self.log_tail)

    def stop(self) -> None:
        if self.proc:
            common.stop_group(self.proc)
        self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def queued(self) -> int:
        """accept: the .eml files bench_queue wrote; relay: the messages in
        outbound's queue directory (not its `__tmp__.` files being written)."""
        try:
            entries = list(os.scandir(self.queue))
        except OSError:
            return 0
        if self.mode == "accept":
            return sum(1 for e in entries if e.name.endswith(".eml"))
        return sum(1 for e in entries if e.is_file(follow_symlinks=False)
                   and not e.name.startswith(("__tmp__.", ".")))

    def pids(self) -> list[int]:
        return common.children(self.proc.pid) if self.alive() else []

    def log_tail(self, n: int = 20) -> str:
        return common.tail(self.log, n)
