"""Request signing against every vector of the spec (V1-V5 official/SDK, D1-D6 derived)."""

from __future__ import annotations

from urllib.parse import parse_qsl

import pytest

from sellerbak.backup.exporters.tiktok.signing import encode_query, sign, string_to_sign

CIPHER = "GCP_XF90igAAAABh00qsWgtvOiGFNqyubMt3"
TOKEN = "6AsPQsUMvH3RkchNUPPh22NROHkE0D8pmq/N5M1kHYcZmtRyv9aVrNv65W7Q6tFA+7D1ud64MPNz5OaT"
WEBHOOK_Q = [("app_key", "68xu9ks5p4i8"), ("shop_cipher", "ROW_xkMbgAAAeVAQra0eZWebFQq5aIK"),
             ("timestamp", "1696909648")]
D1_Q = [("app_key", "29a39d"), ("page_size", "50"), ("shop_cipher", CIPHER),
        ("sort_field", "update_time"), ("sort_order", "ASC"), ("timestamp", "1700000100")]
D1_BODY = b'{"update_time_ge":1700000000,"update_time_lt":1700086400}'

VECTORS = [
    ("V1", "e59af819cc", "/authorization/202309/shops",
     [("app_key", "29a39d"), ("timestamp", "1623812664")], b"", "application/json",
     "b596b73e0cc6de07ac26f036364178ab16b0a907af13d43f0a0cd2345f582dc8"),
    ("V2", "e59af819cc", "/event/202309/webhooks", WEBHOOK_Q, b"", "application/json",
     "ed58e1b5e59865c22a7b828c1cab65007441f43cc91a6cb2f2cdc638e0995a37"),
    ("V3", "e59af819cc", "/event/202309/webhooks", WEBHOOK_Q,
     b'{"event_type":"PACKAGE_UPDATE","address":"https://partner.tiktokshop.com"}',
     "application/json", "701dd6deb2389fe4c469b89bd37fc56f96a6da6afeb4d01c9077a65169752fa7"),
    ("V4", "e59af819cc", "/event/202309/webhooks", WEBHOOK_Q,
     b'{"address":"https://partner.tiktokshop.com","event_type":"PACKAGE_UPDATE"}',
     "application/json", "cd0d6268252f4ba293bf7ea4c0a2873bf9beec600d22530638564ab301435f7a"),
    ("V5", "app_secret", "/test-api", [("foo", "bar")], b"", "application/json",
     "d3cb7fe11ecae942802ceeca67e7cf10120cc12f1517d45fbc1c8cfe5413c80f"),
    ("D1", "e59af819cc", "/order/202309/orders/search",
     D1_Q + [("access_token", "ignored-because-unsigned")], D1_BODY, "application/json",
     "529bc02bd227c733350ee58b55e46a9e45acd8596f71d79e0e7a6da80ba8eb6a"),
    ("D2", "e59af819cc", "/order/202309/orders/search", D1_Q + [("page_token", TOKEN)],
     D1_BODY, "application/json",
     "c3104b5bae5b936d4c0004c8d287571b63ffa97bc1f7c2bdc00dcb187223f5ff"),
    ("D3", "e59af819cc", "/order/202309/orders",
     [("app_key", "29a39d"), ("ids", "576461413038785752,576461413038785753"),
      ("shop_cipher", CIPHER), ("timestamp", "1700000100")], b"", "application/json",
     "aac1d241b10dac364847c396af9998f7506a03e7105ab4c1ff7ae498e0e6634b"),
    ("D4", "e59af819cc", "/finance/202309/statements",
     [("app_key", "29a39d"), ("page_size", "100"), ("shop_cipher", CIPHER),
      ("sort_field", "statement_time"), ("sort_order", "ASC"),
      ("statement_time_ge", "1700000000"), ("statement_time_lt", "1700086400"),
      ("timestamp", "1700000100")], b"", "application/json",
     "9f8736581570876e0e970dc4f597e4e1c0beceb2239233309166b9e37923d1c5"),
    ("D5", "e59af819cc", "/product/202309/images/upload",
     [("app_key", "29a39d"), ("timestamp", "1700000100")], b"--xyz\r\nbinary\r\n--xyz--",
     "multipart/form-data; boundary=xyz",
     "c1b0990d51f6227f11f337ce3e27b0ea7c345ca3a0a4bdaf9f004f2abfeb7bc9"),
    ("D6", "k", "/p", [("b", "2"), ("B", "1"), ("a", "3")], b"", "application/json",
     "88ae5d9f71a4409da2b00e9e96099db5e67bc6a55545f5c7e79036bec1f485c0"),
]


@pytest.mark.parametrize("name,secret,path,query,body,ctype,expect", VECTORS,
                         ids=[v[0] for v in VECTORS])
def test_vectors(name, secret, path, query, body, ctype, expect) -> None:
    assert sign(secret, path, query, body, ctype) == expect


def test_strings_to_sign_printed_by_the_official_doc() -> None:
    assert string_to_sign("/authorization/202309/shops",
                          [("timestamp", "1623812664"), ("app_key", "29a39d")]) == \
        b"/authorization/202309/shopsapp_key29a39dtimestamp1623812664"
    assert string_to_sign("/p", [("b", "2"), ("B", "1"), ("a", "3")]) == b"/pB1a3b2"
    assert string_to_sign("/event/202309/webhooks", WEBHOOK_Q, VECTORS[3][4]) == (
        b"/event/202309/webhooksapp_key68xu9ks5p4i8shop_cipherROW_xkMbgAAAeVAQra0eZWebFQq5aIK"
        b'timestamp1696909648{"address":"https://partner.tiktokshop.com",'
        b'"event_type":"PACKAGE_UPDATE"}')


def test_page_token_is_percent_encoded_on_the_wire_and_signed_decoded() -> None:
    query = D1_Q + [("page_token", TOKEN)]
    wire = encode_query(query)
    assert "%2B" in wire and "%2F" in wire and "+" not in wire and "/" not in wire
    assert parse_qsl(wire, keep_blank_values=True) == query  # what a server decodes
    assert sign("e59af819cc", "/order/202309/orders/search", parse_qsl(wire), D1_BODY) == \
        VECTORS[6][6]
    assert encode_query([("ids", "1,2")]) == "ids=1%2C2"
