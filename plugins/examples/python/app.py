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
import re

import wit_world
from componentize_py_types import Err
from wit_world.imports import log, state, transaction
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

# A header field name (RFC 5322 3.6.8): printable ASCII but ":".
FIELD_NAME = re.compile(r"[!-9;-~]+")


def whole_number(config: dict, key: str, default: int, low: int, high: int) -> int:
    value = config.get(key, default)
    # bool is an int in Python; a TOML true is not a count.
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{key} must be a whole number from {low} to {high}")
    return value


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
        "max_messages": whole_number(config, "max_messages", 0, 0, 2**63),
        # state.incr takes the window as a u32.
        "window_secs": whole_number(config, "window_secs", 3600, 1, 2**32 - 1),
        "count_header": config.get("count_header", "X-Sender-Count"),
    }
    header = settings["count_header"]
    if not isinstance(header, str) or (header and not FIELD_NAME.fullmatch(header)):
        raise ValueError("count_header must be a header field name, or \"\" for none")
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

    def on_rcpt(self, recipient):
        address = recipient.lower()
        domain = address.rpartition("@")[2]
        if address in SETTINGS["addresses"] or domain in SETTINGS["domains"]:
            return Verdict_Reject(
                Reply(550, "5.7.1", f"<{recipient}>: mail to this recipient is blocked")
            )
        return Verdict_Continue()

    def on_data(self, msg):
        # What the hook does not hand over, the transaction tells.
        sender = (transaction.sender() or "").lower()
        if not sender:
            # The null sender (bounces) names nobody to limit; one shared
            # counter would defer every bounce once it filled.
            return continue_()
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
    def on_connect(self):
        return Verdict_Continue()

    def on_helo(self, name):
        return Verdict_Continue()

    def on_mail_from(self, sender):
        return Verdict_Continue()

    def on_pre_delivery(self, destination, msg):
        return continue_()

    def on_delivery_result(self, outcomes):
        pass
