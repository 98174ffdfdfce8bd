"""The PostgreSQL record store's connections: bounded waits, the same as the shared state's."""

import socket
import threading

from collector.sources.pgstore import PostgresRecordStore
from collector.storeurl import CONNECT_TIMEOUT
from tests.servers import free_port


def test_a_server_that_never_answers_fails_the_connection_instead_of_hanging_it() -> None:
    """A partition or a hung server after the handshake: the listener's writer would wait forever
    (every event of the port unanswered, its lock held) instead of answering 503 and retrying."""
    port = free_port()
    silent = socket.create_server(("127.0.0.1", port))  # the kernel accepts; nothing ever answers
    outcome: list[BaseException | None] = []

    def connect() -> None:
        try:
            PostgresRecordStore(f"postgresql://fabwatch:pw@127.0.0.1:{port}/fabwatch", "records_crm", ["t"])
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(CONNECT_TIMEOUT + 10)
    ended_in_time = not thread.is_alive()
    silent.close()  # lets a hanging connection fail now, so the thread ends either way
    thread.join(10)
    assert ended_in_time, "the connection did not fail within its timeout"
    assert outcome[0] is not None
