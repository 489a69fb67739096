"""OpenAPI links of the gateway's routes: which answer hands a client the id another operation takes (a created
profile's `id` is the `profile_id` of GET, PUT and DELETE /api/v1/profiles/{profile_id}). Clients and generators
read them; schemathesis' stateful phase follows them (tests/e2e/test_api_fuzz.py)."""

from __future__ import annotations

from typing import Any

PROFILE = "/api/v1/profiles/{profile_id}"
TOKEN = "/api/v1/users/{user_id}/tokens/{token_id}"
TOKENS = "/api/v1/users/{user_id}/tokens"


def _ref(path: str, method: str) -> str:
    """A JSON pointer to an operation of this document (RFC 6901: `~1` for `/`)."""
    return "#/paths/" + path.replace("~", "~0").replace("/", "~1") + "/" + method


def _links(id_at: str) -> dict[str, Any]:
    """GET, PUT and DELETE of the profile whose id the answer holds at `id_at` (a runtime expression)."""
    return {
        f"{verb}Profile": {
            "operationRef": _ref(PROFILE, method),
            "parameters": {"profile_id": id_at},
            "description": f"{verb} the profile this answer names",
        }
        for verb, method in (("Get", "get"), ("Update", "put"), ("Delete", "delete"))
    }


#: On an answer whose body is one profile (`ProfileDoc`: created, read or updated).
PROFILE_LINKS: dict[str, Any] = _links("$response.body#/id")
#: On the profile list: the first profile's operations.
PROFILE_LIST_LINKS: dict[str, Any] = _links("$response.body#/profiles/0/id")
#: On an issued token: its user's token list, and revoking it.
TOKEN_LINKS: dict[str, Any] = {
    "ListTokens": {
        "operationRef": _ref(TOKENS, "get"),
        "parameters": {"user_id": "$response.body#/user_id"},
        "description": "the tokens of the user the token was issued to",
    },
    "RevokeToken": {
        "operationRef": _ref(TOKEN, "delete"),
        "parameters": {"user_id": "$response.body#/user_id", "token_id": "$response.body#/token_id"},
        "description": "revoke the token just issued",
    },
}
#: On a user's token list: revoking the first one.
TOKEN_LIST_LINKS: dict[str, Any] = {
    "RevokeToken": {
        "operationRef": _ref(TOKEN, "delete"),
        "parameters": {"user_id": "$response.body#/user_id", "token_id": "$response.body#/tokens/0/token_id"},
        "description": "revoke the user's first token",
    }
}

#: A profile that can be created (a name, a type by name, a model reference): POST /api/v1/profiles needs all three,
#: which no schema states (an update may omit them).
PROFILE_EXAMPLES: dict[str, Any] = {
    "engineering": {
        "summary": "an engineering profile",
        "value": {
            "name": "my-engineer",
            "type": "engineering",
            "model_name": "qwen3:8b",
            "parameters": {"temperature": 0.2},
        },
    }
}
