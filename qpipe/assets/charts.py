"""Charts on an asset's page in the UI: the PNG a step wrote, shrunk and inlined into markdown metadata.

A path alone shows nothing where the webserver runs elsewhere than the steps (behind a proxy, on another machine), so
each chart also goes into the materialization itself, at ``WIDTH`` pixels in 256 colours (a few tens of kB: a daily
asset's event log grows by that much a day, not by the full-size file). The full-size file stays beside it.
"""

import base64
import io
from pathlib import Path

import dagster as dg

WIDTH = 720


def inline(png: Path, alt: str, width: int = WIDTH) -> dg.MetadataValue:
    """``png`` as markdown the UI draws: an image with a data URI."""
    from PIL import Image

    with Image.open(png) as image:
        scale = min(1.0, width / image.width)
        size = (round(image.width * scale), round(image.height * scale))
        small = image.convert("RGB").resize(size, Image.Resampling.LANCZOS).quantize(256)
    buffer = io.BytesIO()
    small.save(buffer, format="PNG", optimize=True)
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode('ascii')})")
