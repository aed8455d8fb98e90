"""The old import path of :func:`svfseg.compose.compose_train_config`, kept while callers move to it."""

from svfseg.compose import CONF_DIR, compose_train_config

__all__ = ["CONF_DIR", "compose_train_config"]
