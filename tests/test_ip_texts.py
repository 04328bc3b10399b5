"""What an IP text is (dailyrec.quality.filtering.ip_texts): every spelling of an address is that address,
anything else is no address, and no text or value a source column can carry makes it raise.

Property tests (hypothesis) run a fixed, bounded set of examples (derandomize, no database): the
same examples on every machine and every run."""

from __future__ import annotations

import ipaddress

import hypothesis as hp
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import strategies as st

from dailyrec.ingest import source
from dailyrec.quality.filtering import ip_texts as T
from dailyrec.quality.filtering import rules as FN
from dailyrec.quality.filtering import engine as FE
from dailyrec.quality.filtering import window as FW
from tests import test_filter_noise as crafted
from tests.test_schema import GOOD, MAPPING, WINDOW, table_config

BOUNDED = hp.settings(max_examples=200, deadline=None, derandomize=True, database=None)
NETWORKS = tuple(ipaddress.ip_network(n) for n in ("10.20.0.0/16", "0.0.0.0/8", "fe80::/10",
                                                   "2001:db8::/32", "::1/128"))


def canonical(text: str | None) -> str | None:
    return T.canonical_ips(pa.array([text], pa.string()))[0].as_py()


@pytest.mark.parametrize("text, address", [
    # a zone id is dropped (it names the logging host's interface, not the address)
    ("fe80::1%eth0.5", "fe80::1"), ("fe80::1%eth0", "fe80::1"), ("[fe80::1%eth0]:443", "fe80::1"),
    ("FE80::1%25en0", "fe80::1"),
    ("::ffff:10.20.1.1", "10.20.1.1"), ("::FFFF:1.2.3.4", "1.2.3.4"),
    ("::ffff:a14:101", "10.20.1.1"),
    ("10.20.1.1:8080", "10.20.1.1"), ("[::1]:80", "::1"), ("[2001:db8::1]:443", "2001:db8::1"),
    ("10.20.1.3, 81.2.69.1", "10.20.1.3"), (" 8.8.8.8 ", "8.8.8.8"), ("8.8.8.8\n", "8.8.8.8"),
    ("2001:DB8:0::2", "2001:db8::2"), ("010.020.1.1", "10.20.1.1"), ("0.0.0.0", "0.0.0.0"),
    ("::1.2.3.4", "::102:304"),
    # no address
    ("", None), (" ", None), ("999.1.1.1", None), ("1.2.3", None), ("1.2.3.4.5", None),
    ("localhost", None), ("unknown", None), ("-", None), ("\x00", None), ("1.2.3.4\x00", None),
    ("\u0661\u0662\u0663.\u0661.\u0661.\u0661", None),  # Arabic-Indic digits
    ("\uff11.2.3.4", None),  # a fullwidth digit
    ("x" * 10_000, None), ("1" * 10_000, None), ("1.2.3.4, " + "x" * 10_000, "1.2.3.4"),
    ("167772161", None), ("1.5", None), ("nan", None), ("b'1.2.3.4'", None),
    ("1.2.3.4%eth0", None), ("fe80::1%", None), ("fe80::1%eth 0", None), ("fe80::1%a%b", None),
    ("fe80::1%\u00e9", None), (":", None), ("::::", None), ("1.2.3.4:99999999", None),
    ("[1.2.3.4", None), ("2001:db8::1:::", None), (None, None),
])
def test_each_kind_of_text(text, address):
    assert canonical(text) == address


@pytest.mark.parametrize("text, inside", [
    ("fe80::1%eth0.5", "fe80::/10"), ("::ffff:10.20.1.1", "10.20.0.0/16"),
    ("10.20.1.1:8080", "10.20.0.0/16"), ("[::1]:80", "::1/128"), ("010.020.1.1", "10.20.0.0/16"),
])
def test_an_address_in_any_spelling_is_inside_its_network(text, inside):
    values = pa.array([text, "localhost", "", None, "x" * 10_000, "\x00"])
    flags = T.ips_in_networks(values, (ipaddress.ip_network(inside),))
    assert flags.tolist() == [True, False, False, False, False, False]


def test_ips_in_networks_v4_v6_and_junk():
    values = pa.array(["10.20.0.1", "10.21.0.1", "10.20.255.255", "999.20.0.1", "2001:db8::5",
                       "2001:db9::1", "not an ip", None])
    nets = (ipaddress.ip_network("10.20.0.0/16"), ipaddress.ip_network("2001:db8::/32"))
    assert T.ips_in_networks(values, nets).tolist() == [True, False, True, False, True, False,
                                                       False, False]


def test_plain_dotted_quads_skip_the_parser_and_come_out_as_the_parser_writes_them():
    """canonical_ips takes texts that are already a canonical dotted quad as they are (a regex over
    the distinct texts) and parses only the rest: on every octet from 0 to 300, with and without
    leading zeros, in each position, both ways give the same answer."""
    octets = [str(k) for k in range(301)] + ["00", "01", "007", "0255", "-1", "1a", ""]
    rng = np.random.default_rng(9)
    texts = [".".join(rng.choice(octets, 4)) for _ in range(3000)]
    texts += [f"{a}.1.2.3" for a in octets] + [f"1.2.3.{a}" for a in octets]
    texts += ["1.2.3.4.5", "1.2.3", "1.2.3.4\n", "1.2.3.4 ", "\uff11.2.3.4", "1.2.3.4:80", None]
    values = pa.array(texts)
    fast = T.canonical_ips(values)
    assert fast.to_pylist() == T._parsed(values).to_pylist()
    assert fast.null_count > 1000 and len(fast) - fast.null_count > 1000  # both kinds there


def test_dictionary_and_chunked_texts_give_the_same_answer():
    texts = ["fe80::1%eth0.5", "1.2.3.4", None, "localhost", "1.2.3.4"]
    plain = T.canonical_ips(pa.array(texts)).to_pylist()
    assert T.canonical_ips(pa.array(texts).dictionary_encode()).to_pylist() == plain
    assert T.canonical_ips(pa.chunked_array([texts[:2], texts[2:]])).to_pylist() == plain
    assert T.canonical_ips(pa.array(texts, pa.large_string())).to_pylist() == plain
    assert T.canonical_ips(pa.array([], pa.string())).to_pylist() == []


# --- properties --------------------------------------------------------------------------------

ZONE = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._~-", min_size=1, max_size=12)


@st.composite
def spelled_addresses(draw) -> tuple[str, str]:
    """(a text, the canonical address it spells): an address in one of the spellings logs and
    proxies use: case, leading zeros, a port, brackets, a zone id, whitespace, a proxy list."""
    address = draw(st.ip_addresses())
    expected = str(address.ipv4_mapped or address) if address.version == 6 else str(address)
    if address.version == 4:
        width = draw(st.integers(0, 3))
        text = ".".join(str(int(o)).zfill(width) for o in str(address).split("."))
        if draw(st.booleans()):
            text += f":{draw(st.integers(0, 65535))}"
    else:
        text = draw(st.sampled_from([address.compressed, address.exploded]))
        text = text.upper() if draw(st.booleans()) else text
        if draw(st.booleans()):
            text += "%" + draw(ZONE)
        if draw(st.booleans()):
            text = f"[{text}]" + (f":{draw(st.integers(0, 65535))}" if draw(st.booleans()) else "")
    space = draw(st.sampled_from(["", " ", "\t", "\n", " \u00a0"]))
    tail = draw(st.sampled_from(["", ", 10.0.0.1", ",unknown", ", " + "x" * 200]))
    return space + text + space + tail, expected


@BOUNDED
@hp.given(spelled_addresses())
def test_every_spelling_of_an_address_is_that_address(spelled):
    text, expected = spelled
    assert canonical(text) == expected
    inside = any(ipaddress.ip_address(expected) in n for n in NETWORKS)
    assert T.ips_in_networks(pa.array([text]), NETWORKS).tolist() == [inside]


TEXTS = st.one_of(
    st.text(),  # anything (controls, NUL, astral planes, other scripts' digits)
    st.text(alphabet="0123456789abcdefABCDEF:.%[], \t", max_size=60),  # near misses
    st.text(alphabet=st.characters(categories=["Nd"]) | st.just("."), max_size=20),  # digits
    st.text(min_size=200, max_size=3000),
    spelled_addresses().map(lambda spelled: spelled[0]),
)


@BOUNDED
@hp.given(st.lists(st.one_of(st.none(), TEXTS), max_size=30))
def test_any_texts_are_an_address_or_none_and_canonical_is_idempotent(texts):
    addresses = T.canonical_ips(pa.array(texts, pa.string()))
    assert len(addresses) == len(texts)
    for address in addresses.to_pylist():  # an address in the form ipaddress writes it
        if address is not None:
            parsed = ipaddress.ip_address(address)
            assert str(parsed) == address and getattr(parsed, "ipv4_mapped", None) is None
    assert T.canonical_ips(addresses).equals(addresses)
    flags = T.ips_in_networks(pa.array(texts, pa.string()), NETWORKS)
    expected = [a is not None and any(ipaddress.ip_address(a) in n for n in NETWORKS)
                for a in addresses.to_pylist()]
    assert flags.tolist() == expected
    unusable = T.not_an_address(pa.array(texts, pa.string()), addresses)
    assert unusable.tolist() == [t is not None and a is None
                                 for t, a in zip(texts, addresses.to_pylist())]


# --- the values a source column can carry, through fetch's normalisation ------------------------

RAW_VALUES = st.one_of(
    st.none(), st.integers(), st.floats(), st.booleans(), st.binary(max_size=40),
    TEXTS, st.just(float("nan")), st.just(b"\xff\xfe"), st.just(pd.NA),
)


@BOUNDED
@hp.given(st.lists(RAW_VALUES, min_size=1, max_size=12))
def test_any_value_a_source_sends_as_ip_is_kept_or_quarantined_never_a_crash(values):
    """fetch_delta's normalisation takes any value as the IP (ints, floats, bytes, None, text);
    a row is quarantined only for bytes that are not UTF-8 (as for every field); the rest reach
    the rules, which run, and whose counters count each text that is no address."""
    raw = pd.DataFrame([{**GOOD, "id": f"e{k}", "UserID": str(k)} for k in range(len(values))])
    raw["ip"] = pd.Series(values, dtype=object)
    table, quarantine, _ = source.normalise_table(raw, table_config(), MAPPING, WINDOW)
    assert set(quarantine["reason"]) <= {"ip:not_utf8"}
    assert table.num_rows + len(quarantine) == len(values)
    window = FW.window_of(table.cast(FW.WINDOW_SCHEMA))
    cfg = crafted.settings(**{**crafted.ODD_IP_SETTINGS, "crawler_ua.enabled": False})
    result = FN.apply_rules(window, cfg)
    assert result.keep.sum() + sum(m.sum() for m in result.removed_by.values()) == len(window)
    counts = FE.ip_text_counts(window, 3)
    ips = table.column("ip").to_pylist()
    assert counts["rows_without_ip"] == sum(ip is None for ip in ips)
    assert counts["rows_not_an_address"] == sum(ip is not None and canonical(ip) is None
                                                for ip in ips)

