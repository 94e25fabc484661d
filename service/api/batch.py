"""`POST /events`: many events in one call (a payment gateway's settlement file), each answered
as `POST /instances/{id}/events` would answer it alone.

Each item carries what the single call carries in its path, body and headers: the instance, the
event and its data, an `idempotency_key` (the Idempotency-Key header) and `if_match` (If-Match).
A key is fingerprinted as the single call with that body would be, so one key means one event
on both routes: a report sent one call per invoice and then again as a batch is answered from
the stored results. The role is checked per event (a `gateway` token reports only payment
outcomes). Atomicity is per event (`Events.fire_batch`): every result in the reply is committed.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response

from tollgate.service.api.routes import bind
from tollgate.service.api.support import actor, json_body, reply, runtime
from tollgate.service.application.events import BatchItem

bp = Blueprint("batch", __name__)


def _item(raw: dict[str, Any]) -> BatchItem:
    key = raw.get("idempotency_key")
    fingerprint = ""
    if key is not None:  # the fingerprint of the single call: its method, path and body
        single = {"event": raw["event"], **({"data": raw["data"]} if "data" in raw else {})}
        fingerprint = runtime().fingerprint("POST", f"/instances/{raw['instance']}/events", single)
    if_match = raw.get("if_match")  # int(): JSON Schema counts 3.0 as an integer
    return BatchItem(raw["instance"], raw["event"], raw.get("data", {}), key, fingerprint,
                     None if if_match is None else int(if_match))


@bind(bp)
def fire_events() -> Response:
    body = json_body("fire_events")
    items = [_item(raw) for raw in body["events"]]
    results = runtime().fire_batch(items, actor=actor(), role=actor())
    return reply({"results": [{"index": index, "instance": item.instance, "event": item.event,
                               "status": result.status, "body": result.body, "replayed": result.replayed}
                              for index, (item, result) in enumerate(zip(items, results, strict=True))]})
