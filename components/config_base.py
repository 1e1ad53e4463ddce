"""What every component's config dataclass shares: the one error type of a bad setting.

It sits below the components so that each can own its config dataclass
(components/*/config.py) without importing pipelines; pipelines/config.py
composes those sections into DriftlineConfig and re-exports them.
"""


class ConfigError(ValueError):
    """A misconfiguration; the message names the setting and the fix."""
