"""The catalog authz needs for the notes example: Gatehouse's default catalog plus the ``note`` type.

``GATEHOUSE_AUTHZ_CATALOG`` replaces the whole catalog file, so the override is
built from the catalog authz ships with (never a stale copy) followed by
``note_type.toml``::

    python -m gatehouse_notes.catalog .gatehouse/catalog.toml
    GATEHOUSE_AUTHZ_CATALOG=.gatehouse/catalog.toml make run
"""

from __future__ import annotations

import pathlib
import sys

NOTE_TYPE = pathlib.Path(__file__).resolve().parent / "note_type.toml"


def default_catalog_path() -> pathlib.Path:
    from gatehouse_authz.domain.catalog import DEFAULT_PATH

    return DEFAULT_PATH


def catalog_text(base: pathlib.Path | None = None) -> str:
    """The base catalog (authz's default) with the note type appended."""
    base_text = (base or default_catalog_path()).read_text()
    if "[types.note]" in base_text:
        return base_text
    return base_text.rstrip("\n") + "\n\n" + NOTE_TYPE.read_text()


def write_catalog(path: pathlib.Path | str, base: pathlib.Path | None = None) -> pathlib.Path:
    """Write the merged catalog to ``path`` (validated with authz's own loader first)."""
    from gatehouse_authz.domain.catalog import load_catalog

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(catalog_text(base))
    load_catalog(path)  # raises CatalogError naming the problem
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m gatehouse_notes.catalog OUTPUT.toml")
    print(write_catalog(sys.argv[1]))
