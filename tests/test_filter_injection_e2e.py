"""Names with quotes, backslashes and unicode reach the app intact, and lookups by name find
them (RFC 7644 filter escaping), so takeover and adoption never create duplicates (issue 5)."""

import httpx

TRICKY_USERS = ['o"brien@example.com', "back\\slash@example.com", "zoë@例え.jp",
                'x" or userName pr or "@example.com']  # fmt: skip
TRICKY_GROUPS = ['R&D "core"', "C:\\Temp\\ops", "Équipe 東京", 'a" or displayName pr "']


def test_tricky_names_round_trip_and_are_found_again(harness):
    h = harness
    http = httpx.Client(base_url=h.scim.base_url,
                        headers={"Authorization": f"Bearer {h.scim.token}"})  # fmt: skip
    # One user and one group already exist in the app: they must be adopted, not duplicated.
    existing = http.post("/Users", json={"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                                         "userName": TRICKY_USERS[0]}).json()  # fmt: skip
    http.post("/Groups", json={"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                               "displayName": TRICKY_GROUPS[0]})  # fmt: skip
    h.activate("zs")
    events = []
    for i, name in enumerate(TRICKY_USERS):
        events += [h.user(f"u{i}", username=name), h.member("g0", f"u{i}")]
    for i, name in enumerate(TRICKY_GROUPS):
        events += [h.group(f"g{i}", name), h.associate("zs", f"g{i}"),
                   h.member(f"g{i}", "u0")]  # fmt: skip
    h.send(*events)
    users = h.scim.users()
    assert sorted(u["userName"] for u in users) == sorted(TRICKY_USERS)
    assert next(u for u in users if u["userName"] == TRICKY_USERS[0])["id"] == existing["id"]
    groups = h.scim.groups()
    assert sorted(g["displayName"] for g in groups) == sorted(TRICKY_GROUPS)
    assert h.members(TRICKY_GROUPS[0]) == set(TRICKY_USERS)
