"""A real browser for UI checks: Playwright driving Debian's Chromium (no browser download), and a test of a
screenshot that a page was drawn."""

import shutil
from pathlib import Path


def launch_chromium(playwright):
    return playwright.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                                      args=["--no-sandbox", "--disable-dev-shm-usage"])


def not_blank(png: Path) -> bool:
    """A screenshot with a page on it: many colours, and not one colour nearly everywhere."""
    from PIL import Image

    image = Image.open(png).convert("RGB").resize((350, 225))
    colours = image.getcolors(maxcolors=350 * 225)
    return len(colours) > 50 and max(count for count, _ in colours) < 0.97 * 350 * 225
