"""The `routes` configuration: strict validation and first-match-wins matching."""

from __future__ import annotations

import pytest
import yaml

from sipproxy.sip.routing import NextHop, RouteConfigError, parse_routes, select_route

EXAMPLE = r"""
routes:                                  # first match wins
  - match: {tag: carrier-a, ruri: "^sip:\\+44"}   # both optional; ruri is a regular expression
    forward: "sip:10.0.0.5:5060;transport=tcp"     # next hop
    socket: core                                   # optional: send out of the socket with this tag
  - match: {}
    reply: 404                                     # or answer with a status code
"""


def test_the_documented_example_parses() -> None:
    routes = parse_routes(yaml.safe_load(EXAMPLE)["routes"])
    assert len(routes) == 2
    first, second = routes
    assert first.tag == "carrier-a" and first.socket == "core"
    assert first.forward == NextHop("sip:10.0.0.5:5060;transport=tcp", "10.0.0.5", 5060, "tcp")
    assert second.reply == 404 and second.forward is None
    assert select_route(routes, "carrier-a", "sip:+4420@x") is first
    assert select_route(routes, "carrier-b", "sip:+4420@x") is second
    assert select_route(routes, "carrier-a", "sip:+3320@x") is second
    assert parse_routes(None) == [] and parse_routes([]) == []


def test_next_hop_defaults() -> None:
    routes = parse_routes(
        [
            {"forward": "sip:gw.example.com"},
            {"forward": "sips:[::1]"},
            {"forward": "sip:127.0.0.1:5080;transport=WS"},
        ]
    )
    assert [r.forward for r in routes] == [
        NextHop("sip:gw.example.com", "gw.example.com", 5060, None),
        NextHop("sips:[::1]", "::1", 5061, "tls"),
        NextHop("sip:127.0.0.1:5080;transport=WS", "127.0.0.1", 5080, "ws"),
    ]
    # a rule without match matches everything
    assert routes[0].matches(None, "anything")


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        ({"match": {}}, "routes:"),
        ([{"match": {}, "forwrd": "sip:a"}], "routes[0].forwrd"),
        ([{"match": {"tag": "a", "uri": "x"}, "reply": 404}], "routes[0].match.uri"),
        ([{"match": {"ruri": "("}, "reply": 404}], "routes[0].match.ruri"),
        ([{"match": {"tag": 5}, "reply": 404}], "routes[0].match.tag"),
        ([{"match": []}], "routes[0].match"),
        ([{"reply": 404}, {"reply": 700}], "routes[1].reply"),
        ([{"reply": 99}], "routes[0].reply"),
        ([{"reply": True}], "routes[0].reply"),
        ([{"reply": "404"}], "routes[0].reply"),
        ([{"forward": "http://x"}], "routes[0].forward"),
        ([{"forward": "sip:a b"}], "routes[0].forward"),
        ([{"forward": "sip:h;transport=carrier-pigeon"}], "routes[0].forward"),
        ([{"forward": "sip:h?Subject=x"}], "routes[0].forward"),
        ([{"forward": 5}], "routes[0].forward"),
        ([{"forward": "sip:h", "reply": 404}], "routes[0]:"),
        ([{"match": {}}], "routes[0]:"),
        ([{"reply": 404, "socket": "core"}], "routes[0].socket"),
        ([{"forward": "sip:h", "socket": ""}], "routes[0].socket"),
        (["sip:h"], "routes[0]:"),
    ],
)
def test_bad_routes_are_refused_naming_the_key(raw: object, where: str) -> None:
    with pytest.raises(RouteConfigError) as info:
        parse_routes(raw)
    assert str(info.value).startswith(where), str(info.value)
