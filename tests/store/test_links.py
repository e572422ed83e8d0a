"""Signed media links (store/links.py): a link names its path, expiry and — for live voice —
its listener, and any change to one of them is refused with the reason in Chinese."""
from __future__ import annotations

from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from store.links import LinkError, LinkSigner

PATH = "/api/broadcasts/01JTEST/live.mp3"


def params(link: str) -> dict:
    return {k: v[0] for k, v in parse_qs(urlsplit(link).query).items()}


def test_a_link_for_a_listener_verifies_only_as_issued():
    signer = LinkSigner(b"k" * 32)
    good = params(signer.sign(PATH, 60, sub="speaker-dsc", now=1000))
    assert signer.verify(PATH, good, now=1030) == "speaker-dsc"
    for changed in ({**good, "sub": "speaker-tyc"}, {**good, "exp": str(int(good["exp"]) + 3600)},
                    {k: v for k, v in good.items() if k != "sub"}):
        with pytest.raises(LinkError, match="签名无效或已被篡改"):
            signer.verify(PATH, changed, now=1030)
    with pytest.raises(LinkError, match="签名无效或已被篡改"):
        signer.verify("/api/broadcasts/01JOTHER/live.mp3", good, now=1030)
    with pytest.raises(LinkError, match="链接已过期"):
        signer.verify(PATH, good, now=1061)
    with pytest.raises(LinkError, match="签名无效"):
        LinkSigner(b"x" * 32).verify(PATH, good, now=1030)        # another hub's key


def test_links_without_a_listener_are_as_before():
    signer = LinkSigner(b"k" * 32)
    link = signer.sign("/api/broadcasts/01J/audio", 900, now=0)
    assert "sub=" not in link and signer.verify("/api/broadcasts/01J/audio", params(link), now=10) is None
    with pytest.raises(LinkError, match="链接未签名"):
        signer.verify(PATH, {}, now=0)
    assert urlencode({"exp": 900}) in link
