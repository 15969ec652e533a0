"""A minimal client of Streamlit's websocket protocol, for timing and load tests against a real server.

A browser page loads the server in three ways. It requests a script run with its widget values, it
receives the page as protobuf ForwardMsgs, and it reruns a fragment whenever the server requests an
automatic rerun. This client does the same three things without drawing anything, so
many sessions can run beside the server on a small machine without their rendering taking the
server's cores.
"""

import asyncio
import time

import websockets
from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ClientState_pb2 import ClientState
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from streamlit.proto.WidgetStates_pb2 import WidgetState, WidgetStates

FRAGMENT_DONE = ForwardMsg.FINISHED_FRAGMENT_RUN_SUCCESSFULLY
PAGE_DONE = ForwardMsg.FINISHED_SUCCESSFULLY


class SessionClient:
    """One dashboard session: connect, run the page, set a slider or number, press a button, follow
    automatic reruns."""

    def __init__(self, url: str):
        self.stream_url = url.replace("http://", "ws://").rstrip("/") + "/_stcore/stream"
        self.widgets: dict[str, WidgetState] = {}
        self.widget_ids: dict[tuple[str, str], str] = {}  # (element kind, label) -> widget id, from the page
        self.metrics: dict[str, str] = {}  # label -> shown value, from the latest run
        self.exceptions: list[str] = []
        self.fragment_runs = 0
        self._socket = None
        self._reader = None
        self._auto_reruns: dict[str, asyncio.Task] = {}
        self._page_done: asyncio.Event = asyncio.Event()

    async def open(self, timeout_s: float) -> float:
        """Connect and run the page once; return the seconds until the run finished."""
        self._socket = await websockets.connect(self.stream_url, subprotocols=["streamlit"], max_size=None,
                                                open_timeout=timeout_s)
        self._reader = asyncio.create_task(self._read())
        return await self.rerun(timeout_s)

    async def close(self) -> None:
        for task in self._auto_reruns.values():
            task.cancel()
        if self._socket is not None:
            await self._socket.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)

    async def set_slider(self, label: str, value: float, timeout_s: float) -> float:
        """Move the slider labelled label to value; return the seconds until the page run finished."""
        widget_id = self.widget_ids[("slider", label)]
        state = WidgetState(id=widget_id)
        state.double_array_value.data.append(value)
        self.widgets[widget_id] = state
        return await self.rerun(timeout_s)

    async def set_number(self, label: str, value: float, timeout_s: float) -> float:
        """Type value into the number input labelled label; return the seconds until the page run finished."""
        widget_id = self.widget_ids[("number_input", label)]
        self.widgets[widget_id] = WidgetState(id=widget_id, double_value=value)
        return await self.rerun(timeout_s)

    async def click(self, label: str, timeout_s: float) -> float:
        """Press the button labelled label once; return the seconds until the page run finished."""
        widget_id = self.widget_ids[("button", label)]
        self.widgets[widget_id] = WidgetState(id=widget_id, trigger_value=True)
        try:
            return await self.rerun(timeout_s)
        finally:
            del self.widgets[widget_id]  # a press counts for one run only

    async def rerun(self, timeout_s: float) -> float:
        """Request a run of the whole page; return the seconds until the server reports it finished.

        Returns infinity when the run did not finish within timeout_s.
        """
        self._page_done.clear()
        self.metrics.clear()
        # A full run registers its fragments again and requests their automatic reruns anew.
        for task in self._auto_reruns.values():
            task.cancel()
        self._auto_reruns.clear()
        started = time.perf_counter()
        await self._send_rerun(fragment_id="", auto=False)
        try:
            await asyncio.wait_for(self._page_done.wait(), timeout_s)
        except TimeoutError:
            return float("inf")
        return time.perf_counter() - started

    async def _send_rerun(self, fragment_id: str, auto: bool) -> None:
        state = ClientState(query_string="", page_script_hash="", fragment_id=fragment_id, is_auto_rerun=auto,
                            widget_states=WidgetStates(widgets=list(self.widgets.values())))
        await self._socket.send(BackMsg(rerun_script=state).SerializeToString())

    async def _auto_rerun(self, fragment_id: str, interval_s: float) -> None:
        """Rerun one fragment every interval_s seconds, as the browser does for st.fragment(run_every=...)."""
        while True:
            await asyncio.sleep(interval_s)
            await self._send_rerun(fragment_id, auto=True)

    async def _read(self) -> None:
        try:
            async for payload in self._socket:
                self._handle(ForwardMsg.FromString(payload))
        except websockets.ConnectionClosed:
            pass

    def _handle(self, message: ForwardMsg) -> None:
        kind = message.WhichOneof("type")
        if kind == "delta" and message.delta.WhichOneof("type") == "new_element":
            element = message.delta.new_element
            element_kind = element.WhichOneof("type")
            if element_kind in ("slider", "number_input", "button"):
                widget = getattr(element, element_kind)
                self.widget_ids[(element_kind, widget.label)] = widget.id
            elif element_kind == "metric":
                self.metrics[element.metric.label] = element.metric.body
            elif element_kind == "exception":
                self.exceptions.append(f"{element.exception.type}: {element.exception.message}")
        elif kind == "auto_rerun":
            fragment_id = message.auto_rerun.fragment_id
            if fragment_id not in self._auto_reruns:
                self._auto_reruns[fragment_id] = asyncio.create_task(
                    self._auto_rerun(fragment_id, message.auto_rerun.interval))
        elif kind == "stop_auto_rerun":
            for fragment_id in message.stop_auto_rerun.fragment_ids:
                task = self._auto_reruns.pop(fragment_id, None)
                if task is not None:
                    task.cancel()
        elif kind == "script_finished":
            if message.script_finished == PAGE_DONE:
                self._page_done.set()
            elif message.script_finished == FRAGMENT_DONE:
                self.fragment_runs += 1
