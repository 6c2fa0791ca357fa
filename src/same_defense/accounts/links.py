"""What ties accounts together: the caller's network and the operator's key group.

A thief who knows the service watches accounts buys many keys. Keys bought by one person tend
to share something the service sees: the network they call from, or the customer record the
operator issued them under. Each such *link* gets its own state, fed with every query of every
account behind it, so that 400 Sybils from one /24 add up to one thief. What linking cannot
see: keys bought from unrelated networks under unrelated names (docs/serving.md).

- ``net:<prefix>``: the client's IPv4 /24 or IPv6 /64, from the peer address, or from
  ``X-Forwarded-For`` only when the peer is a configured trusted proxy (anyone can write the
  header; only a proxy of ours can vouch for it).
- ``group:<name>``: the group given at key creation (``same-accounts add NAME --group G``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

LINK_PREFIX = "~"  # store names of link states: "~net:203.0.113.0/24", "~group:acme"
IPV4_PREFIX = 24
IPV6_PREFIX = 64
# Where a load balancer, a pod network or a NAT sits (RFC 1918, carrier-grade NAT, IPv6 ULA).
INTERNAL_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)


def network_of(address: str) -> str | None:
    """``net:<prefix>`` of a public IP address (IPv4 /24, IPv6 /64); None for anything else.

    Loopback, private and link-local addresses are not linked: behind a load balancer that
    the gateway does not trust (no ``--trusted-proxy``), every caller has the balancer's
    private address, and one thief would bind every new customer to its suspicion.
    """
    try:
        ip = ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if (
        ip.is_loopback
        or ip.is_link_local
        or ip.is_unspecified
        or any(ip in net for net in INTERNAL_NETWORKS)
    ):
        return None
    bits = IPV4_PREFIX if ip.version == 4 else IPV6_PREFIX
    return f"net:{ipaddress.ip_network(f'{ip}/{bits}', strict=False)}"


def peer_address(peer: str) -> str:
    """The address of a gRPC peer string: ``ipv4:1.2.3.4:5``, ``ipv6:[::1]:5`` -> address."""
    rest = peer.split(":", 1)[-1] if peer.startswith(("ipv4:", "ipv6:")) else peer
    if rest.startswith("["):
        return rest[1 : rest.index("]")]
    return rest.rsplit(":", 1)[0] if rest.count(":") == 1 else rest


def client_address(peer: str, forwarded_for: str | None, trusted_proxies: Iterable[str]) -> str:
    """The client's address: the peer's, or the last hop of ``X-Forwarded-For`` that our
    trusted proxy appended when (and only when) the peer is that proxy."""
    address = peer_address(peer)
    trusted = set(trusted_proxies)
    if forwarded_for and address in trusted:
        hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
        for hop in reversed(hops):  # the proxy appends the client it saw last
            if hop not in trusted:
                return hop
    return address


def account_links(address: str | None, group: str | None) -> tuple[str, ...]:
    """The links of a call: its network and the key's group (either may be missing)."""
    links = []
    network = network_of(address) if address else None
    if network:
        links.append(network)
    if group:
        links.append(f"group:{group}")
    return tuple(links)


def link_state_name(link: str) -> str:
    """The store name under which a link's state is kept (never a valid account name)."""
    return f"{LINK_PREFIX}{link}"


def is_link_state(name: str) -> bool:
    """Whether a store name is a link's state rather than an account's."""
    return name.startswith(LINK_PREFIX)
