"""Postfix as a peer of the benchmark: Debian's package, one private
instance per run (its own configuration, queue and data directories), so a
system Postfix is neither used nor changed. The set-up is the one
bench/README.md explains: stock master.cf without chroot and without the
stock inet listeners, one smtpd on 127.0.0.1, anvil off.

- "accept": every message goes to the hold queue (check_client_access
  static:HOLD): accepted and fsynced as usual, never scheduled.
- "relay": relayhost = the sink, destination concurrency = sessions.
"""

import os
import shutil
import subprocess
import time

from . import common


def _pf(cmd: str) -> subprocess.CompletedProcess:
    # Postfix writes its errors to a terminal or its log: give it a pty.
    return subprocess.run(["script", "-qec", cmd, "/dev/null"], capture_output=True, text=True)


class Postfix:
    durability = "cleanup fsyncs each queue file before smtpd answers 250"

    def __init__(self, workdir: str, tools_dir: str):
        self.workdir = workdir
        self.etc = os.path.join(workdir, "etc")
        self.spool = os.path.join(workdir, "spool")
        self.maillog = os.path.join(workdir, "maillog")
        self.mode = "accept"
        self.started = False
        self.name = "postfix"

    def install(self) -> None:
        if not (os.access("/usr/sbin/postfix", os.X_OK) and os.access("/usr/sbin/smtp-source", os.X_OK)):
            policy = subprocess.run(["apt-cache", "policy", "postfix"], capture_output=True, text=True)
            if "Candidate: (none)" in policy.stdout or "Candidate:" not in policy.stdout:
                subprocess.run(["apt-get", "update", "-qq"], check=True)
            subprocess.run(["debconf-set-selections"], check=True, text=True,
                           input="postfix postfix/main_mailer_type select No configuration\n")
            subprocess.run(["apt-get", "install", "-y", "-qq", "postfix"], check=True,
                           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        version = subprocess.run(["postconf", "-d", "-h", "mail_version"], capture_output=True,
                                 text=True).stdout.strip()
        self.name = f"postfix {version}"

    def _configure(self, mode: str, port: int, sessions: int, sink_port: int | None) -> None:
        os.makedirs(self.etc, exist_ok=True)
        # Postfix's daemons run as `postfix` and must reach their files.
        os.chmod(self.workdir, 0o755)
        data = os.path.join(self.workdir, "data")
        os.makedirs(data, exist_ok=True)
        shutil.chown(data, "postfix", "postfix")
        procs = max(200, 4 * sessions, 1100)  # 1,000 idle sessions in the memory run
        main = f"""compatibility_level = 3.6
queue_directory = {self.spool}
data_directory = {data}
myhostname = bench.localdomain
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
maillog_file = {self.maillog}
maillog_file_prefixes = {self.workdir}
smtpd_relay_restrictions = permit_mynetworks, reject
default_process_limit = {procs}
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0
smtpd_client_recipient_rate_limit = 0
smtpd_client_event_limit_exceptions = 127.0.0.0/8
"""
        if mode == "relay":
            main += f"""relay_domains =
default_transport = smtp
relayhost = [127.0.0.1]:{sink_port}
smtp_tls_security_level = none
default_destination_concurrency_limit = {sessions}
smtp_destination_concurrency_limit = {sessions}
"""
        else:
            main += """relay_domains = bench.test
smtpd_recipient_restrictions = check_client_access static:HOLD, permit_mynetworks, reject
"""
        with open(os.path.join(self.etc, "main.cf"), "w") as f:
            f.write(main)
        template = "/usr/share/postfix/master.cf.dist"
        if not os.path.exists(template):
            template = "/etc/postfix/master.cf"
        out, skip = [], False
        for line in open(template):
            if line.startswith("#"):
                out.append(line)
                continue
            if line[:1] not in (" ", "\t", "\n", ""):
                fields = line.split()
                skip = len(fields) > 1 and fields[1] == "inet"
                if not skip and len(fields) >= 8:
                    fields[4] = "n"  # no chroot
                    line = " ".join(fields) + "\n"
            if not skip:
                out.append(line)
        out.append(f"127.0.0.1:{port} inet n - n - - smtpd\n")
        with open(os.path.join(self.etc, "master.cf"), "w") as f:
            f.writelines(out)

    def start(self, mode: str, port: int, sessions: int, sink_port: int | None = None) -> None:
        self.stop()
        self.mode = mode
        shutil.rmtree(self.spool, ignore_errors=True)
        os.makedirs(self.spool)
        self._configure(mode, port, sessions, sink_port)
        r = _pf(f"postfix -c {self.etc} start")
        if r.returncode != 0:
            raise RuntimeError(f"postfix start failed: {r.stdout}{r.stderr}")
        self.started = True
        common.wait_port(port, lambda: True, 20, "postfix", self.log_tail)

    def _master(self) -> int | None:
        try:
            with open(os.path.join(self.spool, "pid", "master.pid")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        if not self.started:
            return
        master = self._master()
        left = common.children(master) if master else []
        _pf(f"postfix -c {self.etc} stop")
        self.started = False
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") for p in left):
            time.sleep(0.1)

    def queued(self) -> int:
        queues = ["hold"] if self.mode == "accept" else [
            "maildrop", "incoming", "active", "deferred", "hold"]
        n = 0
        for q in queues:
            for _, _, files in os.walk(os.path.join(self.spool, q)):
                n += len(files)
        return n

    def pids(self) -> list[int]:
        master = self._master()
        return common.children(master) if master else []

    def log_tail(self, n: int = 20) -> str:
        return common.tail(self.maillog, n)
