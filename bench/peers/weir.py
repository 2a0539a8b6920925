"""weir as a peer of the benchmark: one private instance per run, with a
fresh data directory, and one of three plugin set-ups:

- "none": no plugin chains (the gateway alone);
- "bundled": the bundled policy plugins on the hooks they serve, with the
  grants they need: auth-policy at mail_from and data (SPF, DKIM, DMARC,
  ARC and iprev checked per transaction against the benchmark's DNS server
  on loopback, an Authentication-Results field added), antispam at
  connect, rcpt and data (two address lists and a domain list looked up,
  HELO, iprev, authentication and header checks scored, X-Spam headers
  added; no greylisting: smtp-source does not retry) and ratelimit at
  connect, mail_from, rcpt and data (a limit on connections per client,
  messages per sender and recipients per domain, high enough never to
  trip, so every message pays for its throttles in the in-memory state),
  attachments at data (the defaults: the MIME tree is read, no
  attachment to judge) and transport-rules at data (two rules, one of
  which applies and adds a header);
- "noop10": ten no-op plugins on every hook (connect, helo, mail_from,
  rcpt, data, pre_delivery, delivery_result): the machinery's own cost.

Durability: weir appends each message to its spool's segment log and
fsyncs it (group commit: one fsync may cover several messages that arrived
together) before it answers 250; in relay mode each delivery is recorded
before the next, and a finished message gets a done record.
"""

import os
import shutil
import subprocess

from . import common


# The bundled chain's configurations: lists under `test`, which the
# benchmark's DNS server answers (not listed, cached); limits that never
# trip.
ANTISPAM = """
[[dnsbl]]
zone = "bl.test"
weight = 5.0
[[dnsbl]]
zone = "bl2.test"
weight = 3.0
[[domain_list]]
zone = "dbl.test"
weight = 4.0
"""

RATELIMIT = """
[[rule]]
name = "connections"
count = "connections"
key = "client_ip"
limit = 1000000000
window = "1h"
[[rule]]
name = "messages"
count = "messages"
key = "sender"
limit = 1000000000
window = "1h"
stage = "data"
[[rule]]
name = "recipients"
count = "recipients"
key = "recipient_domain"
limit = 1000000000
window = "1h"
"""


TRANSPORT_RULES = """
[[rule]]
name = "external"
[rule.if]
sender_scope = "outside"
[rule.then]
add_header = [{ name = "X-External-Sender", value = "yes" }]

[[rule]]
name = "lottery"
[rule.if]
subject_contains = ["lottery"]
[rule.then]
reject = { code = 550, text = "No lotteries" }
"""


# The bundled set-up's chains, in order; a set-up with some of the
# plugins ("bundled:antispam+ratelimit") keeps their places.
BUNDLED_CHAINS = {
    "connect": ["ratelimit", "antispam"],
    "mail_from": ["auth-policy", "ratelimit"],
    "rcpt": ["antispam", "ratelimit"],
    "data": ["auth-policy", "antispam", "ratelimit", "attachments", "transport-rules"],
}
BUNDLED = ["auth-policy", "antispam", "ratelimit", "attachments", "transport-rules"]


class Weir:
    durability = (
        "fsyncs each message into its spool (group commit) before the 250; "
        "records each delivery before the next"
    )

    def __init__(self, workdir: str, binary: str, plugins: dict[str, str], dns_port: int | None,
                 variant: str = "none"):
        self.workdir = workdir
        self.binary = binary
        self.plugins = plugins  # stem -> built .wasm
        self.dns_port = dns_port
        self.variant = variant
        self.name = "weir" if variant == "none" else f"weir ({variant})"
        self.proc: subprocess.Popen | None = None
        self.config = os.path.join(workdir, "weir.toml")
        self.log = os.path.join(workdir, "weir.log")
        self.mode = "accept"

    def install(self) -> None:
        if not os.access(self.binary, os.X_OK):
            raise RuntimeError(f"no weir binary at {self.binary} (cargo build --release -p weir)")

    def _plugin_dir(self) -> tuple[str, str]:
        """The plugin directory and the listener's chains."""
        pdir = os.path.join(self.workdir, "plugins")
        shutil.rmtree(pdir, ignore_errors=True)
        os.makedirs(pdir)
        if self.variant == "none":
            return pdir, ""
        if self.variant == "bundled" or self.variant.startswith("bundled:"):
            kept = (BUNDLED if self.variant == "bundled"
                    else self.variant.split(":", 1)[1].split("+"))
            unknown = set(kept) - set(BUNDLED)
            if unknown:
                raise ValueError(f"not a bundled plugin: {', '.join(sorted(unknown))}")
            for name in BUNDLED:
                shutil.copy(self.plugins[name], os.path.join(pdir, f"{name}.wasm"))
            with open(os.path.join(pdir, "auth-policy.toml"), "w") as f:
                f.write("# the defaults\n")
            with open(os.path.join(pdir, "antispam.toml"), "w") as f:
                f.write(ANTISPAM)
            with open(os.path.join(pdir, "ratelimit.toml"), "w") as f:
                f.write(RATELIMIT)
            with open(os.path.join(pdir, "attachments.toml"), "w") as f:
                f.write("# the defaults: executables refused, zips looked into\n")
            with open(os.path.join(pdir, "transport-rules.toml"), "w") as f:
                f.write(TRANSPORT_RULES)
            hooks = {h: [p for p in ps if p in kept] for h, ps in BUNDLED_CHAINS.items()}
            chains = "chains = { " + ", ".join(
                f"{h} = [" + ", ".join(f'"{p}"' for p in ps) + "]"
                for h, ps in hooks.items() if ps) + " }\n"
            return pdir, chains
        if self.variant == "noop10":
            names = [f"noop{i}" for i in range(10)]
            for n in names:
                shutil.copy(self.plugins["noop"], os.path.join(pdir, f"{n}.wasm"))
            chain = "[" + ", ".join(f'"{n}"' for n in names) + "]"
            hooks = ["connect", "helo", "mail_from", "rcpt", "data", "pre_delivery",
                     "delivery_result"]
            chains = "chains = { " + ", ".join(f"{h} = {chain}" for h in hooks) + " }\n"
            return pdir, chains
        raise ValueError(f"unknown weir variant {self.variant}")

    def start(self, mode: str, port: int, sessions: int, sink_port: int | None = None) -> None:
        self.stop()
        self.mode = mode
        data = os.path.join(self.workdir, "weir-data")
        shutil.rmtree(data, ignore_errors=True)
        pdir, chains = self._plugin_dir()
        text = f'data_dir = "{data}"\nlog_level = "warn"\n'
        text += f'[plugins]\ndir = "{pdir}"\nwatch = false\n'
        if self.variant.startswith("bundled"):
            text += '[plugins.settings.auth-policy]\ngrants = ["modify"]\n'
            text += '[plugins.settings.antispam]\ngrants = ["dns", "state", "modify"]\n'
            text += '[plugins.settings.ratelimit]\ngrants = ["state"]\n'
            text += '[plugins.settings.attachments]\ngrants = ["body", "modify"]\n'
            text += '[plugins.settings.transport-rules]\ngrants = ["body", "modify"]\n'
        if self.dns_port:
            text += f'[dns]\nnameservers = ["127.0.0.1:{self.dns_port}"]\ntimeout = "2s"\n'
        text += f"[queue]\nmax_per_destination = {sessions}\nmax_concurrency = {max(100, sessions)}\n"
        if mode != "relay":
            # Accept only: queued and kept, nothing delivered (Postfix's hold).
            text += "paused = true\n"
        text += (
            f'[[listener]]\nname = "bench"\nbind = "127.0.0.1:{port}"\n'
            'relay_clients = ["127.0.0.0/8"]\n'
            "max_connections = 20000\nmax_connections_per_ip = 20000\n" + chains
        )
        if mode == "relay":
            text += (
                f'[[route]]\nname = "sink"\ndomains = ["*"]\ntype = "smarthost"\n'
                f'hosts = ["127.0.0.1:{sink_port}"]\ntls = "none"\n'
            )
        with open(self.config, "w") as f:
            f.write(text)
        # weir reads WEIR_* variables as configuration.
        env = {k: v for k, v in os.environ.items() if not k.startswith("WEIR_")}
        self.proc = subprocess.Popen(
            ["bash", "-c", 'ulimit -n "$(ulimit -Hn)"; exec "$0" serve --config "$1"', self.binary,
             self.config],
            stdin=subprocess.DEVNULL, stdout=open(self.log, "w"), stderr=subprocess.STDOUT,
            env=env, start_new_session=True)
        common.wait_port(port, lambda: self.proc.poll() is None, 30, "weir", self.log_tail)

    def stop(self) -> None:
        if self.proc:
            common.stop_group(self.proc)
        self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def queued(self) -> int:
        """Messages in the spool not yet finished (`weir queue ls` reads the
        spool offline, safely while weir runs)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("WEIR_")}
        out = subprocess.run([self.binary, "queue", "ls", "--config", self.config],
                             capture_output=True, text=True, env=env)
        if out.returncode != 0:
            raise RuntimeError(f"weir queue ls failed: {out.stderr.strip()}")
        return sum(1 for line in out.stdout.splitlines() if line.strip())

    def pids(self) -> list[int]:
        return common.children(self.proc.pid) if self.alive() else []

    def log_tail(self, n: int = 20) -> str:
        return common.tail(self.log, n)
