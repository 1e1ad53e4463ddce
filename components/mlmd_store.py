"""Opening driftline's local SQLite ML Metadata store.

Below the components, so a plain component module (the pusher's rollback
recording) opens the store without importing pipelines; pipelines/metadata.py
re-exports these.
"""
from __future__ import annotations

import os

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2


def sqlite_connection_config(path: str) -> metadata_store_pb2.ConnectionConfig:
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    return config


def open_store(metadata_path: str) -> metadata_store.MetadataStore:
    parent = os.path.dirname(os.path.abspath(metadata_path))
    os.makedirs(parent, exist_ok=True)
    return metadata_store.MetadataStore(sqlite_connection_config(metadata_path))
