"""Opening driftline's ML Metadata store: every open goes through `open_store` here.

Below the components, so a plain component module (the pusher's rollback
recording) opens the store without importing pipelines; pipelines/metadata.py
re-exports these. The target is a `MetadataConfig` (SQLite or MySQL; a
pipeline's is `DriftlineConfig.metadata_connection`) or, for SQLite, its path.
"""
from __future__ import annotations

import os
from typing import List, Union

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from components.metadata_config import MetadataConfig

MetadataTarget = Union[str, MetadataConfig]


def _as_config(target: MetadataTarget) -> MetadataConfig:
    if isinstance(target, MetadataConfig):
        return target
    if isinstance(target, (str, os.PathLike)):
        return MetadataConfig(kind="sqlite", path=os.fspath(target))
    raise TypeError(f"an ML Metadata target is a MetadataConfig or a SQLite path, got {type(target).__name__}")


def sqlite_connection_config(path: str) -> metadata_store_pb2.ConnectionConfig:
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    return config


class MetadataUnavailable(RuntimeError):
    """The ML Metadata server cannot be reached or refuses the login; the message names it."""


def connection_config(target: MetadataTarget, create: bool = True) -> metadata_store_pb2.ConnectionConfig:
    """ML Metadata's ConnectionConfig for `target`; the one place both back ends are spelled out."""
    md = _as_config(target)
    md.validate()
    if md.kind == "sqlite":
        if not md.path:
            raise ValueError("a SQLite ML Metadata target needs its path (DriftlineConfig.metadata_connection fills it)")
        return sqlite_connection_config(md.path)
    config = metadata_store_pb2.ConnectionConfig()
    config.mysql.host = md.host
    config.mysql.port = md.port
    config.mysql.database = md.database
    config.mysql.user = md.user
    config.mysql.password = md.password()
    # ML Metadata creates the database when the user may (CREATE privilege), else it must exist.
    config.mysql.skip_db_creation = not create
    return config


def store_exists(target: MetadataTarget) -> bool:
    """Whether anything can have been recorded yet: the SQLite file, or the MySQL database, exists.

    Never creates either (a read-only command on a fresh home leaves nothing behind).
    """
    md = _as_config(target)
    if md.kind == "sqlite":
        return os.path.isfile(md.path)
    try:
        _connect(md, create=False)
    except MetadataUnavailable as e:
        if "Unknown database" in str(e):
            return False
        raise
    return True


# ML Metadata's MySQL schema keeps int properties in 32-bit INT columns (SQLite's are 64-bit), so an
# epoch-millisecond property (a push's pushed_at_ms, a span's event times) is refused as "Out of range".
# driftline widens them to BIGINT once per database: ML Metadata checks its schema version, not column types.
_INT_VALUE_TABLES = ("ArtifactProperty", "ExecutionProperty", "ContextProperty")
_widened = set()


def _widen_int_columns(md: MetadataConfig) -> None:
    key = (md.host, md.port, md.database)
    if key in _widened:
        return
    import pymysql

    connection = pymysql.connect(host=md.host, port=md.port, user=md.user, password=md.password(),
                                 database=md.database, connect_timeout=30)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT TABLE_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s AND "
                           "COLUMN_NAME = 'int_value' AND DATA_TYPE <> 'bigint' AND TABLE_NAME IN (%s, %s, %s)",
                           (md.database, *_INT_VALUE_TABLES))
            for (table,) in cursor.fetchall():
                cursor.execute(f"ALTER TABLE `{table}` MODIFY `int_value` BIGINT NULL")
        connection.commit()
    finally:
        connection.close()
    _widened.add(key)


def _connect(md: MetadataConfig, create: bool) -> metadata_store.MetadataStore:
    config = connection_config(md, create=create)
    try:
        store = metadata_store.MetadataStore(config)
        _widen_int_columns(md)
        return store
    except Exception as e:  # ML Metadata reports every MySQL failure as a bare RuntimeError
        if not isinstance(e, RuntimeError) and type(e).__module__.split(".")[0] != "pymysql":
            raise
        raise MetadataUnavailable(
            f"cannot open ML Metadata on {md.describe()}: {e}. Check that the server runs and answers on "
            f"{md.host}:{md.port} (locally: `make mariadb`), that the user's password is in ${md.password_env}, "
            "and that the user authenticates with mysql_native_password (what ML Metadata 1.16 speaks)") from e


def describe(target: MetadataTarget) -> str:
    return _as_config(target).describe()


def open_store(target: MetadataTarget) -> metadata_store.MetadataStore:
    md = _as_config(target)
    if md.kind == "sqlite":
        os.makedirs(os.path.dirname(os.path.abspath(md.path)), exist_ok=True)
        return metadata_store.MetadataStore(connection_config(md))
    return _connect(md, create=True)


def pipeline_context(store: metadata_store.MetadataStore, pipeline_name: str) -> metadata_store_pb2.Context:
    """The pipeline's context (TFX's `pipeline` context type), created if no run has made it yet."""
    from ml_metadata import errors as mlmd_errors

    from components.mlmd_vocabulary import PIPELINE_CONTEXT_TYPE

    context = store.get_context_by_type_and_name(PIPELINE_CONTEXT_TYPE, pipeline_name)
    if context is not None:
        return context
    try:
        type_id = store.get_context_type(PIPELINE_CONTEXT_TYPE).id
    except mlmd_errors.NotFoundError:
        # No properties: TFX registers this type with can_add_fields/can_omit_fields, so it stays compatible.
        type_id = store.put_context_type(metadata_store_pb2.ContextType(name=PIPELINE_CONTEXT_TYPE))
    [context_id] = store.put_contexts([metadata_store_pb2.Context(type_id=type_id, name=pipeline_name)])
    return store.get_contexts_by_id([context_id])[0]


def pipeline_artifacts(store: metadata_store.MetadataStore, pipeline_name: str,
                       type_name: str) -> List[metadata_store_pb2.Artifact]:
    """The pipeline context's artifacts of one type, oldest first; none if the context or type is not there yet."""
    from ml_metadata import errors as mlmd_errors

    from components.mlmd_vocabulary import PIPELINE_CONTEXT_TYPE

    context = store.get_context_by_type_and_name(PIPELINE_CONTEXT_TYPE, pipeline_name)
    if context is None:
        return []
    try:
        type_id = store.get_artifact_type(type_name).id
    except mlmd_errors.NotFoundError:
        return []
    return sorted((a for a in store.get_artifacts_by_context(context.id) if a.type_id == type_id),
                  key=lambda a: a.id)


def pushed_model_type_id(store: metadata_store.MetadataStore) -> int:
    """The id of TFX's PushedModel artifact type, registered exactly as TFX would if no push has yet."""
    from ml_metadata import errors as mlmd_errors

    from components.mlmd_vocabulary import PUSHED_MODEL_TYPE

    try:
        return store.get_artifact_type(PUSHED_MODEL_TYPE).id
    except mlmd_errors.NotFoundError:
        from tfx.types import standard_artifacts  # the exact type TFX would register

        artifact_type = metadata_store_pb2.ArtifactType()
        artifact_type.CopyFrom(standard_artifacts.PushedModel._get_artifact_type())  # pylint: disable=protected-access
        artifact_type.ClearField("id")
        return store.put_artifact_type(artifact_type, can_add_fields=True, can_omit_fields=True)
