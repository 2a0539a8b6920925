"""A small authoritative DNS server on 127.0.0.1 for the benchmark's
domain, so the authentication checks of the bundled plugins find real
records and nothing is asked of any other server.

UDP only, written by hand (the benchmark needs no Python packages): it
answers A, TXT and MX from a fixed table, and NXDOMAIN or an empty answer
with an SOA (so resolvers cache the negative answer) for the rest.
"""

import socket
import struct
import threading

TTL = 3600


def records(domain: str) -> dict[tuple[str, int], list[bytes]]:
    """The zone: (name, type) -> rdata list."""
    def txt(text: str) -> bytes:
        data = text.encode()
        return b"".join(bytes([len(data[i:i + 255])]) + data[i:i + 255]
                        for i in range(0, len(data), 255))
    a = socket.inet_aton("127.0.0.1")
    return {
        (domain, 1): [a],
        (domain, 16): [txt("v=spf1 ip4:127.0.0.0/8 -all")],
        (f"_dmarc.{domain}", 16): [txt("v=DMARC1; p=reject")],
        (f"mail.{domain}", 1): [a],
    }


def encode_name(name: str) -> bytes:
    return b"".join(bytes([len(l)]) + l.encode() for l in name.split(".") if l) + b"\0"


class DnsServer:
    def __init__(self, domain: str):
        self.domain = domain.lower()
        self.zone = records(self.domain)
        self.names = {n for n, _ in self.zone}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.queries = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _soa(self) -> bytes:
        tld = self.domain.rsplit(".", 1)[-1]
        rdata = (encode_name(f"ns.{self.domain}") + encode_name(f"hostmaster.{self.domain}")
                 + struct.pack(">IIIII", 1, 3600, 600, 86400, TTL))
        return encode_name(tld) + struct.pack(">HHIH", 6, 1, TTL, len(rdata)) + rdata

    def answer(self, query: bytes) -> bytes | None:
        if len(query) < 12:
            return None
        qid, flags, qd = struct.unpack(">HHH", query[:6])
        if qd != 1:
            return None
        labels, i = [], 12
        while i < len(query) and query[i]:
            n = query[i]
            labels.append(query[i + 1:i + 1 + n].decode(errors="replace"))
            i += 1 + n
        i += 1
        if i + 4 > len(query):
            return None
        qtype, _qclass = struct.unpack(">HH", query[i:i + 4])
        question = query[12:i + 4]
        name = ".".join(labels).lower().rstrip(".")
        answers = self.zone.get((name, qtype), [])
        # Authoritative for the whole top-level domain (`test`), as the
        # root would be: a DMARC tree walk asks `_dmarc.test`, and must get
        # a negative answer it can cache, not a refusal.
        tld = self.domain.rsplit(".", 1)[-1]
        in_zone = name == tld or name.endswith("." + tld)
        if answers:
            rcode = 0
        elif name in self.names or not in_zone:
            rcode = 0 if in_zone else 5  # refused: not ours
        else:
            rcode = 3  # NXDOMAIN
        out_flags = 0x8000 | 0x0400 | (flags & 0x0100) | rcode  # QR, AA, RD
        authority = [self._soa()] if in_zone and not answers else []
        header = struct.pack(">HHHHHH", qid, out_flags, 1, len(answers), len(authority), 0)
        body = b"".join(b"\xc0\x0c" + struct.pack(">HHIH", qtype, 1, TTL, len(r)) + r
                        for r in answers)
        return header + question + body + b"".join(authority)

    def _serve(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(4096)
            except OSError:
                return
            self.queries += 1
            reply = self.answer(data)
            if reply:
                self.sock.sendto(reply, addr)

    def close(self) -> None:
        self.sock.close()
