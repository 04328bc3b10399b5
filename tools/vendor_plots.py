"""Build vendor/dvc-plots.html: DVC's plots page with Vega, Vega-Lite and Vega-Embed inside it.

DVC's default page loads the three libraries from a CDN, so `dvc plots show` draws a blank page
on a machine without internet. `.dvc/config` points `plots.html_template` at this page instead:
the scripts are inlined (the page works offline, and as a mail attachment), and it has no
`{scripts}` placeholder, so DVC adds no CDN tags. The versions are the ones DVC's renderer names
(dvc_render/vega.py), fetched from the npm registry with `npm pack`, which checks each tarball's
integrity against the registry. Run this only to change the versions; the page is committed.

    python -m tools.vendor_plots
"""

from __future__ import annotations

import argparse
import subprocess
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "vendor" / "dvc-plots.html"
PACKAGES = {  # package -> (version, file in the tarball)
    "vega": ("5.20.2", "package/build/vega.min.js"),
    "vega-lite": ("5.2.0", "package/build/vega-lite.min.js"),
    "vega-embed": ("6.18.2", "package/build/vega-embed.min.js"),
}

PAGE = """<!DOCTYPE html>
<!-- Built by tools/vendor_plots.py: DVC's plots page, {names} inlined
     (no CDN: `dvc plots show` draws offline). Licenses at the end of this file. -->
<html>
<head>
    <meta charset="utf-8">
    {{refresh_tag}}
    <title>dailyrec: DVC plots</title>
{scripts}
    <style>
        body {{ font-family: sans-serif; }}
        table {{ border-spacing: 15px; }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
{licenses}
"""


def fetch(name: str, version: str, member: str, workdir: Path) -> tuple[str, str]:
    """(the minified script, its license) of one npm package."""
    tarball = subprocess.run(["npm", "pack", "--silent", f"{name}@{version}"], cwd=workdir,
                             check=True, capture_output=True, text=True).stdout.strip()
    with tarfile.open(workdir / tarball) as tar:
        script = tar.extractfile(member).read().decode("utf-8")
        license_text = tar.extractfile("package/LICENSE").read().decode("utf-8")
    for placeholder in ("{plot_divs}", "{scripts}", "{refresh_tag}", "</script"):
        if placeholder in script:  # DVC would replace it, or the browser would end the tag
            raise SystemExit(f"{name}@{version}: its script holds {placeholder!r}")
    return script, license_text


def build() -> str:
    scripts, licenses = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (version, member) in PACKAGES.items():
            script, license_text = fetch(name, version, member, Path(tmp))
            scripts.append(f"    <script>/* {name}@{version} */\n{script}\n    </script>")
            licenses.append(f"<!-- {name}@{version} (npm), its LICENSE:\n"
                            f"{license_text.replace('--', '- -')}\n-->")
    names = ", ".join(f"{n}@{v}" for n, (v, _) in PACKAGES.items())
    return PAGE.format(names=names, scripts="\n".join(scripts), licenses="\n".join(licenses))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    page = build()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(page, encoding="utf-8")
    print(f"{args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}: "
          f"{len(page.encode()):,} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
