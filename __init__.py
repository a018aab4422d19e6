"""labelopt: pay the teacher once per dataset."""

__version__ = "0.1.0"
