def test_group_member_is_provisioned_with_its_group(harness):
    h = harness
    h.activate("zs")
    h.send(
        h.user("u1", department="Eng"),
        h.group("g1", "eng"),
        h.member("g1", "u1"),
        h.associate("zs", "g1"),
    )
    users = h.users()
    assert users["u1@example.com"]["active"] is True
    assert h.members("eng") == {"u1@example.com"}
