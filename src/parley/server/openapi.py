"""The OpenAPI 3.1 document served at ``/openapi.json``."""

from __future__ import annotations

from typing import Any

from parley import __version__


def _err(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _ok(description: str, schema: str, status: str = "200") -> dict[str, Any]:
    return {
        status: {
            "description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
        },
        "400": _err("invalid request or malformed query value (INVALID_MESSAGE)"),
        "401": _err("missing or invalid token"),
        "403": _err("not a member, not allowed by the conversation's roles, or deactivated"),
        "404": _err("not found"),
        "413": _err("over a cap (members, ids per request, size); the cap is in the message"),
        "429": {
            "description": "rate limited (RATE_LIMITED): per-user REST rate, or new"
            " conversations per hour",
            "headers": {"Retry-After": {"schema": {"type": "integer"}}},
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        },
    }


def _id_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def document() -> dict[str, Any]:
    conv_id = _id_param("id")
    return {
        "openapi": "3.1.0",
        "info": {"title": "Parley REST API", "version": __version__},
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                            },
                        }
                    },
                },
                "Conversation": {
                    "type": "object",
                    "required": [
                        "id",
                        "kind",
                        "member_ids",
                        "owner_ids",
                        "created_at",
                        "last_seq",
                    ],
                    "properties": {
                        "id": {"type": "string"},
                        "title": {"type": ["string", "null"]},
                        "kind": {"enum": ["direct", "group"]},
                        "member_ids": {"type": "array", "items": {"type": "string"}},
                        "owner_ids": {
                            "description": "a group's owners, creator first; empty for direct",
                            "type": "array",
                            "items": {"type": "string"},
                        },
                        "created_at": {"type": "string", "format": "date-time"},
                        "last_seq": {"type": "integer"},
                        "last_message": {
                            "oneOf": [{"$ref": "#/components/schemas/Message"}, {"type": "null"}]
                        },
                        "read_seq": {
                            "description": "the caller's read cursor (list only)",
                            "type": "integer",
                        },
                        "unread_count": {
                            "description": "messages from others after read_seq, deleted ones"
                            " not counted (list only)",
                            "type": "integer",
                        },
                        "mention_count": {
                            "description": "of those, the ones that mention the caller (list only)",
                            "type": "integer",
                        },
                    },
                },
                "ConversationList": {
                    "type": "object",
                    "properties": {
                        "conversations": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/Conversation"},
                        }
                    },
                },
                "Attachment": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "type": {"enum": ["image", "video", "audio", "file"]},
                        "url": {"type": "string"},
                        "filename": {"type": "string"},
                        "size": {"type": "integer"},
                        "content_type": {"type": "string"},
                    },
                },
                "Message": {
                    "type": "object",
                    "required": [
                        "id",
                        "conversation_id",
                        "seq",
                        "sender_id",
                        "content",
                        "sent_at",
                        "status",
                        "edited_at",
                        "deleted",
                        "reactions",
                        "mentions",
                    ],
                    "properties": {
                        "id": {"type": "string"},
                        "local_id": {"type": "string"},
                        "conversation_id": {"type": "string"},
                        "seq": {"type": "integer"},
                        "sender_id": {"type": "string"},
                        "content": {"type": "string"},
                        "sent_at": {"type": "string", "format": "date-time"},
                        "status": {"enum": ["sent", "delivered", "read"]},
                        "reply_to": {"type": ["string", "null"]},
                        "attachments": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/Attachment"},
                        },
                        "edited_at": {
                            "description": "when the content was last edited; null if never",
                            "type": ["string", "null"],
                            "format": "date-time",
                        },
                        "deleted": {
                            "description": "a tombstone: empty content, no attachments"
                            " (their links answer 404), no reactions",
                            "type": "boolean",
                        },
                        "reactions": {
                            "description": "emoji to the ids of the users who reacted with"
                            ' it, e.g. {"👍": ["123", "456"]}',
                            "type": "object",
                            "additionalProperties": {"type": "array", "items": {"type": "string"}},
                        },
                        "mentions": {
                            "description": "ids of the members the message mentions",
                            "type": "array",
                            "items": {"type": "string"},
                        },
                    },
                },
                "MessagePage": {
                    "type": "object",
                    "properties": {
                        "messages": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/Message"},
                        },
                        "has_more": {"type": "boolean"},
                    },
                },
                "PresencePage": {
                    "type": "object",
                    "required": ["presence"],
                    "properties": {
                        "presence": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["user_id", "status", "last_seen"],
                                "properties": {
                                    "user_id": {"type": "string"},
                                    "status": {"enum": ["online", "offline"]},
                                    "last_seen": {
                                        "type": ["string", "null"],
                                        "format": "date-time",
                                    },
                                },
                            },
                        }
                    },
                },
                "SearchPage": {
                    "type": "object",
                    "required": ["messages", "has_more", "next_offset"],
                    "properties": {
                        "messages": {
                            "description": "best match first; ties newest first",
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/Message"},
                        },
                        "has_more": {"type": "boolean"},
                        "next_offset": {
                            "description": "the offset of the next page; null on the last",
                            "type": ["integer", "null"],
                        },
                    },
                },
                "SendMessage": {
                    "type": "object",
                    "required": ["content", "local_id"],
                    "properties": {
                        "content": {"type": "string", "maxLength": 10000},
                        "local_id": {
                            "description": "unique per sender: a repeat answers the original",
                            "type": "string",
                            "minLength": 1,
                            "maxLength": 64,
                        },
                        "reply_to": {"type": ["string", "null"]},
                        "attachments": {
                            "description": "uploads (POST /api/attachments) by id",
                            "type": "array",
                            "maxItems": 10,
                            "items": {
                                "type": "object",
                                "required": ["id"],
                                "properties": {"id": {"type": "string"}},
                            },
                        },
                        "sender_id": {
                            "description": "admin tokens only: send as this member",
                            "type": "string",
                        },
                    },
                },
            },
        },
        "security": [{"bearer": []}],
        "paths": {
            "/api/conversations": {
                "post": {
                    "summary": "Create a conversation (a direct one is returned, not duplicated)",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["member_ids"],
                                    "properties": {
                                        "member_ids": {
                                            "type": "array",
                                            "items": {"type": "string"},
                                        },
                                        "title": {"type": "string"},
                                    },
                                }
                            }
                        },
                    },
                    "responses": _ok("the conversation", "Conversation", "201"),
                },
                "get": {
                    "summary": "The caller's conversations with last_message, read_seq,"
                    " unread_count and mention_count",
                    "responses": _ok("conversations", "ConversationList"),
                },
            },
            "/api/conversations/{id}": {
                "get": {
                    "parameters": [conv_id],
                    "responses": _ok("the conversation", "Conversation"),
                },
                "patch": {
                    "summary": "Change a group's title (owners and admin tokens)",
                    "parameters": [conv_id],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["title"],
                                    "properties": {"title": {"type": ["string", "null"]}},
                                }
                            }
                        },
                    },
                    "responses": _ok("the updated conversation", "Conversation"),
                },
            },
            "/api/conversations/{id}/members": {
                "post": {
                    "summary": "Add members to a group (owners and admin tokens; never to a"
                    " direct conversation)",
                    "parameters": [conv_id],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["member_ids"],
                                    "properties": {
                                        "member_ids": {"type": "array", "items": {"type": "string"}}
                                    },
                                }
                            }
                        },
                    },
                    "responses": _ok("the updated conversation", "Conversation"),
                }
            },
            "/api/conversations/{id}/members/{user_id}": {
                "delete": {
                    "summary": "Leave (own id), or remove another member of a group (owners"
                    " and admin tokens)",
                    "parameters": [conv_id, _id_param("user_id")],
                    "responses": _ok("the updated conversation", "Conversation"),
                }
            },
            "/api/conversations/{id}/messages": {
                "get": {
                    "parameters": [
                        conv_id,
                        {
                            "name": "before_seq",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 0},
                        },
                        {
                            "name": "after_seq",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 0},
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 200},
                        },
                    ],
                    "responses": _ok("a page of history, ascending seq", "MessagePage"),
                },
                "post": {
                    "summary": "Send a message (the rules, idempotency and fan-out of the"
                    " WebSocket send_message); an admin token may send as a member",
                    "parameters": [conv_id],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/SendMessage"}
                            }
                        },
                    },
                    "responses": {
                        **_ok("the message, committed and fanned out", "Message", "201"),
                        "200": {
                            "description": "the original message: this local_id was sent before",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/Message"}
                                }
                            },
                        },
                    },
                },
            },
            "/api/search": {
                "get": {
                    "summary": 'Search the caller\'s conversations: words, "phrases" and'
                    " -exclusions over the current content of messages",
                    "parameters": [
                        {
                            "name": "q",
                            "in": "query",
                            "required": True,
                            "schema": {"type": "string", "maxLength": 500},
                        },
                        {
                            "name": "conversation_id",
                            "in": "query",
                            "description": "only this conversation (one of the caller's)",
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 100},
                        },
                        {
                            "name": "offset",
                            "in": "query",
                            "description": "results to skip: next_offset of the previous page",
                            "schema": {"type": "integer", "minimum": 0, "maximum": 10000},
                        },
                    ],
                    "responses": _ok("matching messages, best first", "SearchPage"),
                }
            },
            "/api/presence": {
                "get": {
                    "summary": "Presence of those users who share a conversation with the"
                    " caller (the others are left out); at most 100 distinct ids",
                    "parameters": [
                        {
                            "name": "user_ids",
                            "in": "query",
                            "required": True,
                            "description": "comma-separated user ids",
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": _ok("presence, in request order", "PresencePage"),
                }
            },
            "/api/attachments": {
                "post": {
                    "summary": "Upload an attachment (multipart: file, type)",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "file": {"type": "string", "format": "binary"},
                                        "type": {"enum": ["image", "video", "audio", "file"]},
                                    },
                                }
                            }
                        },
                    },
                    "responses": _ok(
                        "the attachment (sendable with one message)", "Attachment", "201"
                    ),
                }
            },
            "/attachments/{id}/{filename}": {
                "get": {
                    "summary": "Download by signed URL (no Authorization header needed)",
                    "security": [],
                    "parameters": [
                        _id_param("id"),
                        _id_param("filename"),
                        {
                            "name": "exp",
                            "in": "query",
                            "required": True,
                            "schema": {"type": "integer"},
                        },
                        {
                            "name": "sig",
                            "in": "query",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                    ],
                    "responses": {
                        "200": {"description": "the bytes"},
                        "403": _err("bad or expired signature"),
                    },
                }
            },
            "/api/admin/users/{user_id}/deactivate": {
                "post": {
                    "summary": "Deactivate a user (admin token); closes its sockets with 4004",
                    "parameters": [_id_param("user_id")],
                    "responses": {"200": {"description": "done"}, "403": _err("not an admin")},
                }
            },
            "/api/admin/users/{user_id}/activate": {
                "post": {
                    "parameters": [_id_param("user_id")],
                    "responses": {"200": {"description": "done"}, "403": _err("not an admin")},
                }
            },
            "/healthz": {"get": {"security": [], "responses": {"200": {"description": "alive"}}}},
            "/readyz": {
                "get": {
                    "security": [],
                    "responses": {
                        "200": {"description": "ready"},
                        "503": {"description": "not ready"},
                    },
                }
            },
            "/metrics": {
                "get": {"security": [], "responses": {"200": {"description": "Prometheus text"}}}
            },
        },
    }
