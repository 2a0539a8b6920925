"""sender-policy: a Weir plugin in Python.

- rcpt: refuses the recipients on its block list (an address, or "@domain"
  for a whole domain) with 550 5.7.1;
- data: counts each sender's messages in the gateway's `state` (shared by
  every connection, and by every gateway of a cluster with Redis); over
  `max_messages` within `window_secs` it answers 451 4.7.1, otherwise it
  adds a header with the count.

Its configuration (`sender-policy.toml`; the plugin receives it as JSON):

    block = ["spam@example.org", "@blocked.example"]
    max_messages = 100        # 0: no limit, count only
    window_secs = 3600
    count_header = "X-Sender-Count"   # "": no header

Grants it needs: `state` (the counter) and `modify` (the header).
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import log, state
from wit_world.imports.types import (
    Decision,
    Header,
    Hook,
    Mutation_AddHeader,
    Reply,
    Verdict_Continue,
    Verdict_Reject,
    Verdict_Tempfail,
)

# What `init` derived from the configuration. Every instance gets `init`
# before it serves, so this is set whenever a hook runs.
SETTINGS = {}

KNOWN = {"block", "max_messages", "window_secs", "count_header"}


def parse(text: str) -> dict:
    """The configuration, checked; raises ValueError naming what is wrong."""
    config = json.loads(text)
    unknown = set(config) - KNOWN
    if unknown:
        raise ValueError(f"unknown keys: {', '.join(sorted(unknown))}")
    block = config.get("block", [])
    if not isinstance(block, list) or not all(isinstance(b, str) for b in block):
        raise ValueError("block must be a list of addresses or @domains")
    settings = {
        "addresses": {b.lower() for b in block if not b.startswith("@")},
        "domains": {b[1:].lower() for b in block if b.startswith("@")},
        "max_messages": int(config.get("max_messages", 0)),
        "window_secs": int(config.get("window_secs", 3600)),
        "count_header": str(config.get("count_header", "X-Sender-Count")),
    }
    if settings["max_messages"] < 0 or settings["window_secs"] <= 0:
        raise ValueError("max_messages must be >= 0 and window_secs > 0")
    return settings


def continue_() -> Decision:
    return Decision(Verdict_Continue(), [])


class WitWorld(wit_world.WitWorld):
    def init(self, config: str) -> None:
        try:
            SETTINGS.update(parse(config))
        except (ValueError, TypeError) as e:
            # The gateway refuses the plugin, with this text in its log.
            raise Err(f"sender-policy: {e}")

    def hooks(self):
        return [Hook.RCPT, Hook.DATA]

    def on_rcpt(self, conn, env, recipient):
        address = recipient.lower()
        domain = address.rpartition("@")[2]
        if address in SETTINGS["addresses"] or domain in SETTINGS["domains"]:
            return Verdict_Reject(
                Reply(550, "5.7.1", f"<{recipient}>: mail to this recipient is blocked")
            )
        return Verdict_Continue()

    def on_data(self, conn, env, msg):
        sender = (env.sender or "").lower() or "<>"
        try:
            count = state.incr(f"sender:{sender}", 1, SETTINGS["window_secs"])
        except Err as e:
            # No state (not granted, or the backend is down): fail open.
            log.log(log.Level.WARN, f"state unavailable: {e.value}")
            return continue_()
        limit = SETTINGS["max_messages"]
        if limit and count > limit:
            return Decision(
                Verdict_Tempfail(
                    Reply(451, "4.7.1", f"Too many messages from {sender}; try again later")
                ),
                [],
            )
        if not SETTINGS["count_header"]:
            return continue_()
        header = Header(SETTINGS["count_header"], f"{count} in {SETTINGS['window_secs']}s")
        return Decision(Verdict_Continue(), [Mutation_AddHeader(header)])

    # The hooks it does not name are never called; the contract still
    # wants every export.
    def on_connect(self, conn):
        return Verdict_Continue()

    def on_helo(self, conn):
        return Verdict_Continue()

    def on_mail_from(self, conn, env):
        return Verdict_Continue()

    def on_pre_delivery(self, env, destination, msg):
        return continue_()

    def on_delivery_result(self, env, outcomes):
        pass
