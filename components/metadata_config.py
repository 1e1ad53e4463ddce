"""Where driftline's ML Metadata lives: a SQLite file (the default) or a MySQL / MariaDB database.

A plain dataclass with no heavy imports, so the configuration (pipelines/config.py) can hold it as
its `metadata` section and components/mlmd_store.py, below the pipelines, can open it. The password
of a MySQL user is never part of the configuration: it is read from the environment variable named
by `password_env` in the process that connects.
"""
from __future__ import annotations

import dataclasses
import os

from components.config_base import ConfigError

METADATA_KINDS = ("sqlite", "mysql")
DEFAULT_PASSWORD_ENV = "DRIFTLINE_MYSQL_PASSWORD"


# A metadata setting that cannot work; the message names the setting and the fix.
MetadataConfigError = ConfigError


@dataclasses.dataclass(frozen=True)
class MetadataConfig:
    # "sqlite": one file (`path`, default <home>/metadata.sqlite); "mysql": a MySQL or MariaDB
    # server, as production TFX keeps ML Metadata (Cloud SQL).
    kind: str = "sqlite"
    # The SQLite file; '' means <home>/metadata.sqlite.
    path: str = ""
    host: str = "127.0.0.1"
    port: int = 3306
    database: str = ""
    user: str = ""
    # The environment variable holding the user's password (it may hold ''; unset is an error).
    password_env: str = DEFAULT_PASSWORD_ENV

    def validate(self) -> None:
        if self.kind not in METADATA_KINDS:
            raise MetadataConfigError(f"metadata.kind must be one of {METADATA_KINDS}, got {self.kind!r}")
        if self.kind == "mysql":
            missing = [name for name in ("host", "database", "user") if not getattr(self, name)]
            if missing:
                raise MetadataConfigError(f"metadata.kind is 'mysql' but metadata.{', metadata.'.join(missing)} "
                                          "is empty: name the server, the database and the user")
            if not isinstance(self.port, int) or not 0 < self.port < 65536:
                raise MetadataConfigError(f"metadata.port must be a TCP port (1-65535), got {self.port!r}")
            if not self.password_env:
                raise MetadataConfigError("metadata.password_env is empty: name the environment variable that "
                                          "holds the MySQL password")

    def password(self) -> str:
        """The MySQL password from the environment, read now, in this process."""
        value = os.environ.get(self.password_env)
        if value is None:
            raise MetadataConfigError(
                f"ML Metadata is on MySQL ({self.describe()}) but the environment variable {self.password_env} "
                "is not set: export it with the password of the metadata user (an empty value means no password), "
                "or name another variable in metadata.password_env")
        return value

    def describe(self) -> str:
        if self.kind == "sqlite":
            return f"SQLite {self.path}"
        return f"MySQL {self.user}@{self.host}:{self.port}/{self.database}"
