"""The label store: soft labels written once by a teacher, read many times by students."""
from .reader import LabelStore
from .schema import FORMAT, SCHEMA_VERSION, StoreError
from .tools import combine, file_sha256, verify
from .writer import StoreLayout, StoreWriter

__all__ = ["FORMAT", "SCHEMA_VERSION", "LabelStore", "StoreError", "StoreLayout", "StoreWriter",
           "combine", "file_sha256", "verify"]
