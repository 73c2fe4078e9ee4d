"""Structural XML equivalence: same elements, attributes and numbers; whitespace ignored."""

from __future__ import annotations

from lxml import etree


def _tokens(text):
    out = []
    for tok in (text or "").split():
        try:
            out.append(float(tok))
        except ValueError:
            out.append(tok)
    return out


def _elements(el):
    return [c for c in el if isinstance(c.tag, str)]


def xml_differences(a, b, path="") -> list[str]:
    """Differences between two element trees, as readable strings (empty: equivalent)."""
    here = f"{path}/{a.tag}"
    diffs = []
    if a.tag != b.tag:
        return [f"{here}: tag {a.tag!r} != {b.tag!r}"]
    if dict(a.attrib) != dict(b.attrib):
        diffs.append(f"{here}: attributes {dict(a.attrib)} != {dict(b.attrib)}")
    if _tokens(a.text) != _tokens(b.text):
        diffs.append(f"{here}: text {a.text!r} != {b.text!r}")
    ca, cb = _elements(a), _elements(b)
    if [c.tag for c in ca] != [c.tag for c in cb]:
        diffs.append(f"{here}: children {[c.tag for c in ca]} != {[c.tag for c in cb]}")
        return diffs
    for x, y in zip(ca, cb):
        diffs.extend(xml_differences(x, y, here))
    return diffs


def parse(path):
    return etree.parse(str(path), etree.XMLParser(remove_blank_text=True, remove_comments=True)).getroot()
