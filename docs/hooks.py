"""MkDocs hooks: files kept outside ``docs/`` join the site, and the links to them that the
pages carry for GitHub readers (``../BENCHMARKS.md#anchor``) are pointed at their site pages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

# repository path -> its place in the site; the pages link to "../<repository path>".
OUTSIDE = {
    "BENCHMARKS.md": "benchmarks.md",
    "examples/deeplense-example-plugin/README.md": "plugin-guide.md",
    "examples/notebooks/tour.ipynb": "tour.ipynb",
}


def on_files(files: Files, config: Any) -> Files:
    root = Path(config.config_file_path).parent
    for source, dest in OUTSIDE.items():
        files.append(File.generated(config, dest, abs_src_path=str(root / source)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    for source, dest in OUTSIDE.items():
        markdown = markdown.replace(f"](../{source}", f"]({dest}")
    if page.file.src_uri == "benchmarks.md":  # written at the repository's top, beside docs/
        markdown = markdown.replace("](docs/", "](")
    return markdown
