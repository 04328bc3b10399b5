"""What an IP text is: decided here, once, for the internal and shared_ip rules of both engines.

    canonical_ips(texts) -> pa.Array            per text: its address in canonical form, or null
                                                when it is no address (a null text too)
    ips_in_networks(texts, networks) -> bool[]  per text: its address lies in one of the networks
    addresses_in_networks(addresses, networks)  the same for canonical_ips' output
    not_an_address(texts, addresses) -> bool[]  per text: given, but no address

A text is understood when the first entry of an X-Forwarded-For list ("203.0.113.7, 10.0.0.1"),
trimmed, is one of
    IPv4   a dotted quad of ASCII decimal octets <= 255, leading zeros read as decimal
           ("010.20.1.1" -> "10.20.1.1"), maybe with a port ("10.20.1.1:8080")
    IPv6   what ipaddress reads (hex groups, "::", an embedded IPv4), maybe in brackets with a
           port ("[::1]:80"), maybe with a zone id ("fe80::1%eth0"); written compressed and in
           lower case, and an IPv4-mapped one as its IPv4 ("::ffff:10.20.1.1" -> "10.20.1.1")
Anything else is no address: a name ("localhost"), a bare number ("167772161"), three octets, an
octet over 255, non-ASCII digits ("١٢٣.١.١.١"), controls, a text longer than MAX_TEXT. The rules
treat such an event as one without an IP (no network holds it, it shares no address); the event
stays, and filter_noise counts it (metrics/filter.json's ip_texts).

Texts are handled once per distinct value (a dictionary's values), with Arrow's RE2 kernels; only
the IPv6 candidates are parsed in Python, one distinct text at a time.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# The longest address text with brackets, a port and a zone is about 60 characters; a longer
# first entry is no address, and the patterns below never see it.
MAX_TEXT = 100
# A dotted quad as canonical_ips writes it (no leading zeros, octets <= 255): most addresses are,
# and a regex over the distinct texts is much cheaper than parsing them.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
CANONICAL_IPV4 = rf"^(?:{_OCTET}\.){{3}}{_OCTET}$"
# ASCII classes only ([0-9], never \d: RE2's \d is ASCII, Python's is not).
_ZONE = r"%[0-9A-Za-z._~-]+"  # RFC 6874's unreserved characters
_IPV6_CHARS = r"[0-9A-Fa-f:.]"
_BRACKETED = (rf"^\[({_IPV6_CHARS}+(?:{_ZONE})?)\](?::[0-9]{{1,5}})?$", r"\1")
_IPV4_PORT = (r"^([0-9]{1,3}(?:\.[0-9]{1,3}){3}):[0-9]{1,5}$", r"\1")
# A zone id (RFC 4007) names an interface of the machine that logged the address: it is not part
# of the address, no CIDR can name it, and it is dropped ("fe80::1%eth0.5" -> "fe80::1", inside
# fe80::/10). The same link-local address seen on two interfaces is one address to the rules.
_IPV6_ZONE = (rf"^({_IPV6_CHARS}*:{_IPV6_CHARS}*){_ZONE}$", r"\1")
_IPV4_TEXT = r"^[0-9]{1,3}(?:\.[0-9]{1,3}){3}$"
_IPV6_TEXT = rf"^{_IPV6_CHARS}*:{_IPV6_CHARS}*$"
_IPV6_LONGEST = 45  # "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"


def canonical_ips(texts: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Per text, its address in canonical form, or null when it is none (see the module's
    docstring). Never raises on any text; canonical_ips(canonical_ips(t)) == canonical_ips(t)."""
    texts = _strings(texts)
    fast = pc.fill_null(pc.match_substring_regex(texts, CANONICAL_IPV4), False)
    rest = pc.and_(pc.invert(fast), pc.is_valid(texts))
    if not pc.any(rest).as_py():
        return texts
    return pc.replace_with_mask(texts, rest, _parsed(texts.filter(rest)))


def _strings(texts: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    if pa.types.is_dictionary(texts.type):
        texts = texts.dictionary_decode()
    return texts.cast(pa.string())


def _parsed(texts: pa.Array) -> pa.Array:
    """canonical_ips of texts that are not a canonical dotted quad already, by parsing."""
    first = pc.list_element(pc.split_pattern(texts, ",", max_splits=1), 0)
    first = pc.utf8_trim_whitespace(first)
    short = pc.less_equal(pc.utf8_length(first), MAX_TEXT)
    first = pc.if_else(short, first, pa.scalar(None, pa.string()))
    for pattern, replacement in (_BRACKETED, _IPV4_PORT, _IPV6_ZONE):
        first = pc.replace_substring_regex(first, pattern, replacement)
    out = pa.nulls(len(first), pa.string())
    v4 = pc.fill_null(pc.match_substring_regex(first, _IPV4_TEXT), False)
    if pc.any(v4).as_py():
        out = pc.replace_with_mask(out, v4, _dotted(first.filter(v4)))
    v6 = pc.fill_null(pc.and_(pc.match_substring_regex(first, _IPV6_TEXT),
                              pc.less_equal(pc.utf8_length(first), _IPV6_LONGEST)), False)
    if pc.any(v6).as_py():  # the distinct IPv6 candidates, parsed one at a time
        parsed = [_ipv6(text) for text in first.filter(v6).to_pylist()]
        out = pc.replace_with_mask(out, v6, pa.array(parsed, pa.string()))
    return out


def _dotted(quads: pa.Array) -> pa.Array:
    """Four ASCII decimal octets of 1-3 digits each -> "a.b.c.d" without leading zeros, or null
    where an octet is over 255."""
    octets = pc.list_flatten(pc.split_pattern(quads, ".")).cast(pa.int16())
    octets = octets.to_numpy(zero_copy_only=False).reshape(-1, 4)
    valid = (octets <= 255).all(axis=1)
    text = np.where(valid[:, None], octets, 0).astype(str)
    dotted = pc.binary_join_element_wise(*(pa.array(text[:, k]) for k in range(4)), ".")
    return pc.if_else(pa.array(valid), dotted, pa.scalar(None, pa.string()))


def _ipv6(text: str) -> str | None:
    """An IPv6 text of hex digits, colons and dots, no zone: compressed, lower case; an
    IPv4-mapped one as its IPv4; None when ipaddress refuses it."""
    try:
        address = ipaddress.IPv6Address(text)
    except ValueError:
        return None
    mapped = address.ipv4_mapped
    return str(mapped) if mapped is not None else address.compressed


def not_an_address(texts: pa.Array, addresses: pa.Array) -> np.ndarray:
    """Per text (and its canonical_ips): given, but no address."""
    return np.asarray(pc.and_(pc.is_valid(texts), pc.is_null(addresses)))


def ips_in_networks(texts: pa.Array, networks: Iterable) -> np.ndarray:
    """One boolean per text: its address lies inside any of the networks (no address: False)."""
    return addresses_in_networks(canonical_ips(texts), networks)


def addresses_in_networks(addresses: pa.Array, networks: Iterable) -> np.ndarray:
    """ips_in_networks for canonical_ips' output. IPv4 is vectorised (dotted quad -> integer);
    IPv6 addresses, rare here, are parsed one distinct address at a time."""
    networks = list(networks)
    flags = np.zeros(len(addresses), dtype=bool)
    if not networks or len(addresses) == 0:
        return flags
    v4 = pc.fill_null(pc.match_substring_regex(addresses, CANONICAL_IPV4), False)
    if pc.any(v4).as_py():
        octets = pc.list_flatten(pc.split_pattern(addresses.filter(v4), ".")).cast(pa.int64())
        octets = octets.to_numpy(zero_copy_only=False).reshape(-1, 4)
        as_int = (octets[:, 0] << 24) | (octets[:, 1] << 16) | (octets[:, 2] << 8) | octets[:, 3]
        hit = np.zeros(len(as_int), dtype=bool)
        for net in (n for n in networks if n.version == 4):  # a loop over configured networks
            lo, hi = int(net.network_address), int(net.broadcast_address)
            hit |= (as_int >= lo) & (as_int <= hi)
        flags[np.flatnonzero(np.asarray(v4))] = hit
    v6_networks = [n for n in networks if n.version == 6]
    v6 = np.asarray(pc.and_(pc.invert(v4), pc.is_valid(addresses)))
    if v6_networks and v6.any():
        texts = addresses.filter(pa.array(v6)).to_pylist()
        flags[np.flatnonzero(v6)] = [_in_any(text, v6_networks) for text in texts]
    return flags


def _in_any(address: str, networks: list) -> bool:
    try:
        parsed = ipaddress.IPv6Address(address)  # canonical: valid, unless a caller passed text
    except ValueError:
        return False
    return any(parsed in network for network in networks)
