"""edit_bench: comparable benchmarks for text-to-image model editors.

Importing costs nothing: no model loads, seeding or environment changes happen at import.
"""

__version__ = "0.1.0"
