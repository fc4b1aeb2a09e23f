"""mkdocs hooks (mkdocs.yml ``hooks:``): the benchmark records and plots join the site.

The pages link the measurements where they live, ``../benchmarks/results/<name>`` (so the links
also work when the Markdown is read on a code host), and the records stay in one place. This
hook adds every file of ``benchmarks/results/`` to the site under ``benchmarks/results/``: the
plots (``.png``) and data (``.json``) as static files, the records (``.md``) as pages, so that
mkdocs resolves, checks (strict mode) and rewrites those links like any other.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files, InclusionLevel

RESULTS = "benchmarks/results"


def on_files(files: Files, config: MkDocsConfig) -> Files:
    results = Path(config.config_file_path).parent / RESULTS
    for path in sorted(results.iterdir()):
        if path.is_file() and path.suffix in {".md", ".png", ".json"}:
            dest = f"{RESULTS}/{path.name}"
            if path.suffix == ".md":  # a page: benchmarks/results/<stem>/index.html
                dest = (
                    f"{RESULTS}/{path.stem}/index.html"
                    if config.use_directory_urls
                    else (f"{RESULTS}/{path.stem}.html")
                )
            files.append(
                File(
                    f"../{RESULTS}/{path.name}",
                    config.docs_dir,
                    config.site_dir,
                    config.use_directory_urls,
                    dest_uri=dest,
                    inclusion=InclusionLevel.NOT_IN_NAV
                    if path.suffix == ".md"
                    else InclusionLevel.INCLUDED,
                )
            )
    return files
