"""XML from slide files, parsed with every entity and DTD refused (defusedxml).

Instrument XML (QPTIFF pages, OME-XML, inForm descriptions) never needs a DTD; one that
declares entities is either broken or hostile (billion laughs, external entities reading
local files), and is refused before anything expands, whatever the system's expat does.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

_DECLARATION = re.compile(r"^\s*<\?xml[^>]*\?>")


class UnsafeXMLError(ValueError):
    """The XML declares a DTD or entities."""


def parse_xml(text: str) -> ET.Element:
    """Parse ``text``; raises ``ET.ParseError`` when malformed and :class:`UnsafeXMLError` when it has a DTD."""
    # ElementTree refuses a str whose declaration names another encoding (QPTIFF says utf-16)
    body = _DECLARATION.sub("", text, count=1)
    try:
        return fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise UnsafeXMLError(f"the XML declares a DTD or entities ({type(exc).__name__}), refused as unsafe") from None
