"""Connect Devices to the Spotflow IoT Platform: provisioning, durable telemetry, desired and
reported properties. The SDK's core is written in Rust; every blocking call releases the GIL and
can be interrupted with Ctrl+C. Background events are logged with the ``spotflow_device`` logger
of the standard :mod:`logging` module."""

import logging
from typing import Any, Callable, Dict, List, Optional, Union, final

__version__: str

__all__ = [
    "SpotflowError",
    "Compression",
    "ProvisioningOperation",
    "DesiredProperties",
    "ClientStats",
    "ConnectionEvent",
    "LogHandler",
    "C2dMessage",
    "UpdateAgent",
    "DeviceClient",
    "StreamSender",
    "_shutdown",
    "__version__",
]

class SpotflowError(Exception):
    """Any function, method, or property can throw this exception when it cannot continue because
    of an error. Errors that happen during the communication in the background are logged using
    the package logging."""

@final
class ProvisioningOperation:
    """The summary of an ongoing Provisioning Operation.

    If you specify a custom callback to DeviceClient.start, you'll receive a ProvisioningOperation
    as its argument."""

    @property
    def id(self) -> str:
        """(Read-only) The ID of this Provisioning Operation."""
    @property
    def verification_code(self) -> str:
        """(Read-only) The verification code of this Provisioning Operation."""
    @property
    def expiration_time(self) -> str:
        """(Read-only) The expiration time of this Provisioning Operation. The operation is no
        longer valid after that. The date/time format is RFC 3339."""

@final
class Compression:
    """An enum that specifies the compression to use for sending a message.

    * ``UNCOMPRESSED`` - Don't compress the message.
    * ``FASTEST`` - Compress the message using the fastest compression algorithm settings.
    * ``SMALLEST_SIZE`` - Compress the message using the algorithm settings that produce the
      smallest size. Beware that this may be significantly slower than the fastest compression.

    ``FASTEST`` and ``SMALLEST_SIZE`` are Brotli (``content-encoding=br``), which the Spotflow
    platform decodes. Beyond the reference, for receivers known to decode them (such as the local
    emulator; the Spotflow platform is only known to decode Brotli):

    * ``LZ4`` - the LZ4 frame format (``content-encoding=lz4``): very fast, lower ratio.
    * ``ZSTD`` - Zstandard at level 3 (``content-encoding=zstd``).
    """

    UNCOMPRESSED: "Compression"
    FASTEST: "Compression"
    SMALLEST_SIZE: "Compression"
    LZ4: "Compression"
    ZSTD: "Compression"
    def __int__(self) -> int: ...

@final
class DesiredProperties:
    """A wrapper of Desired Properties."""

    @property
    def version(self) -> int:
        """The version of the current properties."""
    @property
    def values(self) -> dict:
        """The dictionary containing the values of the individual properties."""

@final
class StreamSender:
    """A sender of Messages to a Stream.

    Create it with DeviceClient.create_stream_sender. StreamSender will send all the Messages to
    the given Stream."""

    def send_message(
        self,
        payload: Union[str, bytes],
        batch_id: Optional[str] = None,
        message_id: Optional[str] = None,
        batch_slice_id: Optional[str] = None,
        chunk_id: Optional[str] = None,
    ) -> None:
        """Send a Message to the Platform.

        Warning: This method blocks the current thread until the Message (and all the Messages
        enqueued before it) is sent to the Platform. If your Device doesn't have a stable Internet
        connection, consider using enqueue_message instead.

        If the Stream doesn't have a Message ID Autofill Pattern, you must provide the message_id.
        If the Stream groups Messages into Batches and doesn't have a Batch ID Autofill Pattern,
        you must provide the batch_id. Optionally, you can provide also batch_slice_id to use
        Batch Slices and chunk_id to use Message Chunking."""
    def enqueue_message(
        self,
        payload: Union[str, bytes],
        batch_id: Optional[str] = None,
        message_id: Optional[str] = None,
        batch_slice_id: Optional[str] = None,
        chunk_id: Optional[str] = None,
    ) -> None:
        """Enqueue a Message to be sent to the Platform.

        The method returns right after it saves the Message to the queue in the local database
        file (the Message then survives a crash or a power cut). A background thread sends the
        messages from the queue to the Platform. You can check the number of pending messages in
        the queue using DeviceClient.pending_messages_count."""
    def enqueue_batch_completion(self, batch_id: str) -> None:
        """Enqueue the manual completion of the current Batch to be sent to the Platform.

        The Platform also completes the previous Batch automatically when the new one starts.
        Therefore, you might not need to call this method at all."""
    def enqueue_message_completion(self, batch_id: str, message_id: str) -> None:
        """Enqueue the manual completion of the current Message to be sent to the Platform. Use
        this method when Message Chunking is used."""

@final
class ClientStats:
    """(Beyond the reference) A snapshot of a DeviceClient. Durations are in seconds, times are
    Unix timestamps; totals count from this start of the client."""
    queued_messages: int
    queued_bytes: int
    oldest_queued_age: Optional[float]
    in_flight: int
    enqueued_total: int
    delivered_total: int
    redelivered_total: int
    dropped_total: int
    refused_total: int
    failed_enqueues_total: int
    connection: str
    connection_since: float
    reconnects: int
    connection_attempts: int
    last_connection_error: Optional[str]
    desired_version: Optional[int]
    reported_version: Optional[int]
    latency_samples: int
    latency_p50: Optional[float]
    latency_p90: Optional[float]
    latency_p99: Optional[float]

@final
class C2dMessage:
    """(Beyond the reference) A cloud-to-device message from the device's durable inbox (see
    ``DeviceClient.receive_c2d_message``)."""

    payload: bytes
    properties: Dict[str, str]
    @property
    def message_id(self) -> Optional[str]:
        """The Platform's id of the message (``$.mid``), if it has one."""
    def complete(self) -> None:
        """Remove the message from the inbox: it is never returned again."""

@final
class UpdateAgent:
    """(Beyond the reference) Applies the software updates the Platform asks for (the desired
    property ``spotflowUpdate``): downloads the artifact (resuming after outages and restarts),
    checks its SHA-256 and signature, calls ``install``, then ``confirm`` after the reboot the
    install asked for, and ``rollback`` when the check fails. Started by
    ``DeviceClient.start_update_agent``."""

    @property
    def state(self) -> Dict[str, Any]:
        """The update's state, as reported to the Platform: a dict with ``id``, ``version``,
        ``state`` (``idle``, ``downloading``, ``verifying``, ``ready``, ``installing``,
        ``rebooting``, ``confirming``, ``succeeded``, ``failed``, ``rolledBack``, ``cancelled``),
        ``bytes``, ``size``, ``error`` (``{"reason", "detail"}`` or ``None``) and ``queued``."""
    def wait_until_finished(self, update_id: Optional[str] = None, timeout: Optional[float] = None) -> Dict[str, Any]:
        """Waits until an update ends (the one with ``update_id`` if given) and returns its state;
        raises ``SpotflowError`` after ``timeout`` seconds."""
    def stop(self) -> None:
        """Stops the agent (what it saved stays: a later start goes on from there)."""

class LogHandler(logging.Handler):
    """(Beyond the reference) A ``logging.Handler`` that sends records to the Platform through the
    client's durable queue: each record is journaled before ``emit`` returns (it survives the
    process being killed) and sent in batches of the ``device-logs`` stream, across outages and
    restarts. It never waits on the network. The SDK's own records (logger ``spotflow_device``)
    are never taken. The Platform can change the minimum level through the desired property
    ``spotflowLogLevel``."""

    def __init__(self, client: DeviceClient, level: int = logging.NOTSET) -> None: ...
    def emit(self, record: logging.LogRecord) -> None: ...
    def flush(self) -> None:
        """Move every record taken so far into the durable queue now."""
        ...

@final
class ConnectionEvent:
    """(Beyond the reference) What happened to the connection to the Platform, as given to
    ``connection_event_callback``. ``kind`` is ``"connecting"``, ``"connected"``,
    ``"disconnected"``, ``"refused"`` or ``"closed"``; attributes that do not apply are ``None``."""
    kind: str
    attempt: Optional[int]
    """The attempt's number since the start (``"connecting"``)."""
    since: Optional[float]
    """Since when (Unix timestamp) the client is connected (``"connected"``)."""
    reason: Optional[str]
    """Why (``"disconnected"``, ``"refused"``): ``"network"``, ``"tls"``, ``"stalled"``,
    ``"authentication"``, ``"platform"`` or ``"credential_renewal"``."""
    message: Optional[str]
    """The reason in words."""
    retry_helps: Optional[bool]
    """Whether trying again may succeed without anything else changing."""
    retry_in: Optional[float]
    """Seconds until the client tries again."""
    permanent: Optional[bool]
    """Whether retrying with the same credentials cannot succeed (``"refused"``)."""

@final
class DeviceClient:
    """A client connected to the Platform. Create its instance using DeviceClient.start.

    The client stores all outgoing communication to the local database file and then sends it in
    a background thread asynchronously. Thanks to that, it works even when the connection is
    unreliable. The client is a context manager: leaving the ``with`` block closes it (it is also
    closed at interpreter exit)."""

    @staticmethod
    def start(
        device_id: Optional[str],
        provisioning_token: str,
        db: str,
        instance: Optional[str] = None,
        display_provisioning_operation_callback: Optional[Callable[[ProvisioningOperation], None]] = None,
        desired_properties_updated_callback: Optional[Callable[[DesiredProperties], None]] = None,
        allow_remote_access: bool = False,
        remote_access_ports: Optional[List[int]] = None,
        direct_method_handlers: Optional[Dict[str, Callable[[Any], Any]]] = None,
        connection_event_callback: Optional[Callable[[ConnectionEvent], None]] = None,
    ) -> "DeviceClient":
        """Start communicating with the Platform.

        * device_id: The unique Device ID you are running the code from. If you don't specify it
          here, you'll need to either store it in the Provisioning Token, or choose Provisioning
          Operation.
        * provisioning_token: The Provisioning Token used to start Device Provisioning.
        * db: The path to the local database file where the Device SDK stores the connection
          credentials and temporarily persists incoming and outgoing messages. This method creates
          the file if it doesn't exist. The file must end with the suffix ".db".
        * instance: The URI/hostname of the Platform instance where the Device will connect to.
          The default value is api.eu1.spotflow.io. Extra certificate authorities are trusted
          through the ``SSL_CERT_FILE`` environment variable.
        * display_provisioning_operation_callback: The function that displays the details of the
          Provisioning Operation. Set it to override the default message that is written to the
          standard output.
        * desired_properties_updated_callback: The function that is called right after
          DeviceClient.start with the current version of the Desired Properties and then whenever
          the Device receives their update from the Platform. The function is called in a
          separate thread; the whole interface of the Device SDK is thread-safe, so it's safe to
          use it in the function.
        * allow_remote_access: Whether the Platform may open remote-access tunnels to TCP ports
          of the Device (``127.0.0.1``), so that an operator reaches them (SSH, a local web UI)
          without any inbound connection to the Device's network. Off by default.
        * remote_access_ports: (Beyond the reference package.) With ``allow_remote_access``, the
          only ports tunnels may go to (others are refused); all ports when not given.
        * direct_method_handlers: (Beyond the reference package.) The Device's direct methods,
          by name: each function is called (on a thread of its own, at most 50 at once) with the
          call's payload decoded from JSON (``None`` when empty) and returns ``(status, body)``
          (``status`` an integer from 100 to 599), or just ``body`` for status 200; ``body`` is
          anything ``json.dumps`` takes, at most 131,072 bytes as JSON. A method without a
          handler is answered 404; a handler that raises, or returns an invalid status, is logged
          and answered 500 with the reason; a body over the limit is logged and answered 413.
          The Device takes direct methods only when this is given.
        * connection_event_callback: (Beyond the reference package.) Called with every
          ConnectionEvent, in order, from the first connection attempt on (connecting,
          connected, disconnected or refused with the reason and whether retrying helps,
          closed), on a thread of its own; events it falls more than 256 behind on are lost,
          oldest first.

        If the Device is not yet registered in the Platform, or its Registration Token is
        expired, this method performs Device Provisioning and waits for the approval. If the
        Registration Token from the last run is still valid, this method succeeds even without
        the connection to the Internet."""
    @property
    def workspace_id(self) -> str:
        """(Read-only) The ID of the Workspace to which the Device belongs."""
    @property
    def device_id(self) -> str:
        """(Read-only) The Device ID. Note that the value might differ from the one requested in
        DeviceClient.start if the technician overrides it during the approval of the Provisioning
        Operation."""
    def create_stream_sender(
        self,
        stream_group: Optional[str] = None,
        stream: Optional[str] = None,
        compression: Optional[Compression] = Compression.UNCOMPRESSED,
    ) -> StreamSender:
        """Create a StreamSender for sending Messages to a Stream that is contained in a Stream
        Group. If stream_group is omitted, the Platform directs the Messages to the default Stream
        Group of the current Workspace. If stream is omitted, the Platform directs the Messages
        into the default Stream of the given Stream Group."""
    @property
    def pending_messages_count(self) -> int:
        """The number of Messages that have been persisted in the local database file but haven't
        been sent to the Platform yet."""
    @property
    def stats(self) -> ClientStats:
        """(Beyond the reference) A snapshot of the client: queue, deliveries, connection and
        enqueue-to-acknowledgement latency."""
    @property
    def refused_messages_count(self) -> int:
        """(Read-only, not in the official SDK) The number of Messages the Platform refused for
        good since the start, e.g. a Message over 250,000 bytes whose upload was answered with a
        4xx other than 401, 408 and 429. A refused Message leaves the queue (logged as an error);
        the Messages behind it keep flowing."""
    def wait_enqueued_messages_sent(self) -> None:
        """Block the current thread until all the Messages that have been previously enqueued are
        sent to the Platform. Raises SpotflowError if the Platform refused some of them for good
        (each refusal is raised once, by the first wait that covers it)."""
    def get_desired_properties(self) -> DesiredProperties:
        """Get the current Desired Properties. Only the latest version is returned, any versions
        between the last obtained one and the current one are skipped."""
    def get_desired_properties_if_newer(self, version: Optional[int] = None) -> Optional[DesiredProperties]:
        """Get the current Desired Properties if their version is higher than version or if
        version is None. Otherwise, return None."""
    def start_update_agent(
        self,
        install: Callable[[Dict[str, Any], str], bool],
        rollback: Callable[[Dict[str, Any]], None],
        confirm: Optional[Callable[[Dict[str, Any]], None]] = None,
        public_key: Optional[str] = None,
        confirm_timeout: float = 300.0,
        checkpoint_bytes: int = 1048576,
    ) -> UpdateAgent:
        """(Beyond the reference) Start applying the software updates the Platform asks for (see
        ``UpdateAgent``): ``install(update, path)`` gets the verified artifact and returns whether
        the device must reboot; ``confirm(update)`` (optional) is the health check of the new
        version, ``rollback(update)`` restores the previous one; each raises to fail. ``update`` is
        a dict with ``id``, ``version``, ``size`` and ``sha256``. With ``public_key`` (64
        hexadecimal digits, Ed25519), only manifests signed with it are applied."""
    def receive_c2d_message(self, timeout: Optional[float] = None) -> Optional[C2dMessage]:
        """(Beyond the reference) The next cloud-to-device message from the device's durable
        inbox, waiting at most ``timeout`` seconds (``None``: until one comes); ``None`` when none
        came in time. A message stays in the inbox, and is returned again after a restart, until
        its ``complete()`` is called."""
    def update_reported_properties(self, properties: dict) -> None:
        """Enqueue an update of the Reported Properties to be sent to the Platform.

        This method saves these Reported Properties persistently in the local database file. The
        update will be sent asynchronously when possible. To be sure that it has been sent to the
        Platform, call any_pending_reported_properties_updates."""
    @property
    def any_pending_reported_properties_updates(self) -> bool:
        """(Read-only) Whether are there any updates to Reported Properties that are yet to be
        sent to the Platform."""
    def close(self) -> None:
        """Stop the background communication and release the database file. Messages not sent yet
        stay in the database and are sent by the next client started with it."""
    def __enter__(self) -> "DeviceClient": ...
    def __exit__(self, exc_type: object = None, exc_value: object = None, traceback: object = None) -> bool: ...

def _shutdown() -> None:
    """Closes every client of this process (registered with ``atexit``; not for applications)."""
