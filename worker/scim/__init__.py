"""SCIM 2.0 client layer: profiles (as data), one error tree, a thin client on httpx."""

from .client import (
    ENTERPRISE_URN,
    FLAT_KEYS,
    MAX_BODY_BYTES,
    RemoteGroup,
    RemoteUser,
    RequestRecord,
    ScimClient,
    ScimUser,
    escape_filter_value,
    make_http_client,
)
from .errors import (
    Conflict,
    Invalid,
    NotFound,
    NotSent,
    ScimError,
    Transient,
    Unauthorized,
    Unsupported,
    parse_retry_after,
)
from .profiles import GENERIC, PROFILES, ZSCALER, Profile, generic_from_config, profile_by_name

__all__ = [
    "ENTERPRISE_URN",
    "FLAT_KEYS",
    "GENERIC",
    "MAX_BODY_BYTES",
    "PROFILES",
    "ZSCALER",
    "Conflict",
    "Invalid",
    "NotFound",
    "NotSent",
    "Profile",
    "RemoteGroup",
    "RemoteUser",
    "RequestRecord",
    "ScimClient",
    "ScimError",
    "ScimUser",
    "Transient",
    "Unauthorized",
    "Unsupported",
    "escape_filter_value",
    "generic_from_config",
    "make_http_client",
    "parse_retry_after",
    "profile_by_name",
]
