"""The scorer's requests arrive on the client job's cell, where the sender's cellnet origin is known.

NVFlare's aux dispatch gives a handler only the peer context, which the sender writes; the scorer needs the
``ORIGIN`` header the cellnet stamps (`medpfl_app.nvflare.site.request_checks`). So, as NVFlare's own
``MetricRelay`` does, it registers its exact topics on the client job's cell: an exact (channel, topic)
registration takes precedence over the ``"*"`` topic through which NVFlare's command agent hands auxiliary
messages to the aux runner (``Registry.find``), for streamed and plain messages alike
(``Cell._register_request_cb``). Without a cell, every request is refused.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply

from medpfl_app.nvflare.site.request_checks import quoted

#: ``handler(topic, request, fl_ctx, origin=...) -> reply``: the scorer's score or release handler.
Handler = Callable[..., Shareable]


def find_cell(engine: Any, wait_s: float) -> Any:
    """The client job's cell, waiting up to ``wait_s`` for the engine to have one; None without."""
    if not hasattr(engine, "get_cell"):
        return None
    deadline = time.monotonic() + wait_s
    cell = engine.get_cell()
    while cell is None and time.monotonic() < deadline:
        time.sleep(0.1)
        cell = engine.get_cell()
    return cell


def register_topics(cell: Any, topics: Iterable[str], callback: Callable[[Any], Any]) -> None:
    """Handle ``topics`` of NVFlare's aux channel on ``cell`` with ``callback`` (exact topics win over ``"*"``)."""
    from nvflare.private.defs import CellChannel

    for topic in topics:
        cell.register_request_cb(channel=CellChannel.AUX_COMMUNICATION, topic=topic, cb=callback)


def _peer_context(request: Any) -> FLContext | None:
    """The request's peer context, as NVFlare's aux dispatch builds it (the sender's props: claims only)."""
    if not isinstance(request, Shareable):
        return None
    peer_props = request.get_peer_props()
    if not isinstance(peer_props, dict) or not peer_props:
        return None
    peer_ctx = FLContext()
    peer_ctx.set_public_props(peer_props)
    return peer_ctx


def answer_cell_request(
    message: Any, engine: Any, handlers: dict[str, Handler], *, default_topic: str, site: Any, logger: logging.Logger
) -> Any:
    """NVFlare's aux dispatch (``CommandAgent._aux_communication`` and ``AuxRunner.dispatch``) plus the sender's
    cellnet origin, which the handlers check; one log line and a bare error code on any failure.

    Args:
        message: The cell message.
        engine: The client engine (None: service unavailable).
        handlers: Handler by topic.
        default_topic: The topic whose handler answers any other topic.
        site: This site (for the log).
        logger: The scorer's logger.
    """
    from nvflare.apis.utils.fl_context_utils import gen_new_peer_ctx
    from nvflare.fuel.f3.cellnet.defs import MessageHeaderKey
    from nvflare.fuel.f3.cellnet.defs import ReturnCode as CellReturnCode
    from nvflare.fuel.f3.cellnet.utils import new_cell_message

    origin = message.get_header(MessageHeaderKey.ORIGIN)
    topic = message.get_header(MessageHeaderKey.TOPIC)
    request = message.payload
    if engine is None:
        return new_cell_message({MessageHeaderKey.RETURN_CODE: CellReturnCode.SERVICE_UNAVAILABLE})
    with engine.new_context() as fl_ctx:
        try:
            peer_ctx = _peer_context(request)
            if peer_ctx is not None:
                fl_ctx.set_peer_context(peer_ctx)
            routed = topic if topic in handlers else default_topic
            reply = handlers[routed](routed, request, fl_ctx, origin=origin)
            if isinstance(request, Shareable) and request.get_cookie_jar():
                reply.set_cookie_jar(request.get_cookie_jar())
        except Exception as error:  # noqa: BLE001 - one line at the site, a bare error code to the sender
            logger.warning(
                f"MedPFL audit: {site} could not handle a {quoted(topic, 40)} request "
                f"from cell {quoted(origin)}: {type(error).__name__}"
            )
            reply = make_reply(ReturnCode.EXECUTION_EXCEPTION)
        reply.set_peer_context(gen_new_peer_ctx(fl_ctx))
    return new_cell_message({MessageHeaderKey.RETURN_CODE: CellReturnCode.OK}, reply)
