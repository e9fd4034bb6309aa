"""Turn what `ss`, `ip` and `nstat` print, and what netsnoop reports, into comparable sets.

Shared by test_parsers.py (captured trees: the tools' output is stored in capture.json)
and test_live_netns.py (the tools run live in a private namespace).  See "ss's print
quirks" in docs/procfs.md: ss prints a dual-stack wildcard as `*`, an IPv6 address in
brackets, a device-bound one as ADDR%DEV; it has no tcp6/udp6 Netid.
"""

# netsnoop (kernel) state names -> ss's spelling; UDP/raw "CLOSE" is ss's UNCONN.
SS_STATES = {
    "ESTABLISHED": "ESTAB", "SYN_SENT": "SYN-SENT", "SYN_RECV": "SYN-RECV",
    "FIN_WAIT1": "FIN-WAIT-1", "FIN_WAIT2": "FIN-WAIT-2", "TIME_WAIT": "TIME-WAIT",
    "CLOSE": "UNCONN", "CLOSE_WAIT": "CLOSE-WAIT", "LAST_ACK": "LAST-ACK",
    "LISTEN": "LISTEN", "CLOSING": "CLOSING",
}
WILDCARDS = ("*", "0.0.0.0", "::")


def norm_host(host):
    """"[::1]%lo" -> "::1"; every wildcard -> "*"."""
    host = host.split("%", 1)[0]
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return "*" if host in WILDCARDS else host


def split_hostport(text):
    """"[2001:db8::1]:40004" -> ("2001:db8::1", 40004); a "*" port is 0."""
    host, _, port = text.rpartition(":")
    return norm_host(host), 0 if port == "*" else int(port)


def ss_sockets(lines):
    """`ss -tanuwH` lines -> set of (netid, state, local, lport, peer, pport)."""
    out = set()
    for line in lines:
        f = line.split()
        if len(f) < 6:
            continue
        local, peer = split_hostport(f[4]), split_hostport(f[5])
        out.add((f[0], f[1]) + local + peer)
    return out


def netsnoop_sockets(sockets, protos=("tcp", "udp", "raw")):
    """netsnoop socket dicts -> the same tuples as ss_sockets (tcp6 -> tcp, ...)."""
    out = set()
    for s in sockets:
        netid = s["proto"].rstrip("6")
        if netid not in protos:
            continue
        out.add((netid, SS_STATES[s["state"]], norm_host(s["local_address"]),
                 s["local_port"], norm_host(s["remote_address"]), s["remote_port"]))
    return out


def _ip_routes(routes, any_address, host_len, no_dev):
    out = set()
    for r in routes:
        dst = r["dst"]
        if dst == "default":
            dst = any_address + "/0"
        elif "/" not in dst:
            dst += host_len
        out.add((dst, r.get("gateway", any_address), r.get("dev", no_dev)))
    return out


def ip_routes_v4(routes):
    """`ip -j route` (main table) -> set of (destination/len, gateway, dev)."""
    return _ip_routes(routes, "0.0.0.0", "/32", "*")


def mask_len(mask):
    return sum(bin(int(part)).count("1") for part in mask.split("."))


def netsnoop_routes_v4(rows):
    return set(("%s/%d" % (r["destination"], mask_len(r["mask"])), r["gateway"], r["iface"])
               for r in rows)


def ip_routes_v6(routes):
    """`ip -j -6 route show table all` -> set of (destination/len, next hop, dev)."""
    return _ip_routes(routes, "::", "/128", None)


def netsnoop_routes_v6(rows):
    """ipv6_route rows without the per-table null reject entries `ip` hides."""
    return set(("%s/%d" % (r["destination"], r["prefix_len"]), r["next_hop"], r["iface"])
               for r in rows if not (r["flags_raw"] & 0x0200 and r["iface"] == "lo"))


def ip_neighbours(entries):
    """`ip -j -4 neigh` -> set of (address, lladdr, dev)."""
    return set((e["dst"], e.get("lladdr", ""), e["dev"]) for e in entries)


def netsnoop_neighbours(entries):
    return set((e["ip_address"], e["hw_address"], e["device"]) for e in entries)


def ip_link_counters(links):
    """`ip -j -s link` -> {ifname: {netsnoop dev field: value}} for the fields both have."""
    out = {}
    for link in links:
        stats = link.get("stats64") or link.get("stats") or {}
        rx, tx = stats.get("rx", {}), stats.get("tx", {})
        out[link["ifname"]] = {
            "rx_bytes": rx.get("bytes"), "rx_packets": rx.get("packets"),
            "rx_errs": rx.get("errors"), "rx_multicast": rx.get("multicast"),
            "tx_bytes": tx.get("bytes"), "tx_packets": tx.get("packets"),
            "tx_errs": tx.get("errors"), "tx_colls": tx.get("collisions"),
        }
    return out


def flatten_counters(groups):
    """{Section: {Counter: n}} mappings -> {SectionCounter: n}, as nstat names them."""
    out = {}
    for sections in groups:
        for section, counters in sections.items():
            if not isinstance(counters, dict):
                continue
            for name, value in counters.items():
                out[section + name] = value
    return out
