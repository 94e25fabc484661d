"""`/openapi.json`: the OpenAPI 3.1 description of every route (see `service/api/description.py`)."""

from __future__ import annotations

from functools import cache
from typing import Any

from flask import Blueprint, Response

from tollgate.service.api import description
from tollgate.service.api.routes import bind
from tollgate.service.api.support import reply

bp = Blueprint("openapi", __name__)


@cache
def _document() -> dict[str, Any]:
    return description.build()


@bind(bp)
def openapi() -> Response:
    return reply(_document())
