"""Opens a page of retrieve.py as a person would: headless Chromium loads OUT/index.html from disk
(no server), every image must load, and a screenshot must not be blank.
  python scripts/check_page.py nn/index.html [--screenshot nn/screenshot.png]
Needs Chromium (Debian: apt-get install -y chromium). Last line: 'page: ok ...' or one error line, exit 2."""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")
TIMEOUT_S = 120


def browser():
    for b in BROWSERS:
        path = shutil.which(b)
        if path:
            return path
    return None


def chromium(exe, *args):
    with tempfile.TemporaryDirectory() as profile:  # a fresh profile: no state of another run
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
               f"--user-data-dir={profile}", "--virtual-time-budget=15000", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)


def check(page, screenshot, width=1800, height=1400):
    """(images, broken, colours) of `page`; raises SystemExit(2) with one line on any failure."""
    def fail(msg):
        print(f"check_page: error: {msg}", file=sys.stderr)
        raise SystemExit(2)
    exe = browser()
    if exe is None:
        fail("no Chromium found (apt-get install -y chromium)")
    if not os.path.isfile(page):
        fail(f"no page at '{page}'")
    url = "file://" + os.path.abspath(page)
    dom = chromium(exe, "--dump-dom", url).stdout
    m = re.search(r"<body[^>]*data-images=\"(\d+)\"[^>]*data-broken=\"(\d+)\"", dom)
    if not m:
        fail(f"'{page}' did not report its images (not a retrieve.py page, or its script did not run)")
    images, broken = int(m.group(1)), int(m.group(2))
    if images == 0 or broken:
        fail(f"'{page}': {broken} of {images} images did not load")
    tmp = os.path.join(os.path.dirname(os.path.abspath(screenshot)), ".screenshot-tmp.png")
    chromium(exe, f"--screenshot={tmp}", f"--window-size={width},{height}", url)
    if not os.path.isfile(tmp):
        fail("Chromium wrote no screenshot")
    from PIL import Image
    with Image.open(tmp) as im:
        colours = len(im.convert("RGB").getcolors(maxcolors=1 << 20) or [])
        lo, hi = im.convert("L").getextrema()
    if colours < 16 or hi - lo < 64:
        os.remove(tmp)
        fail(f"the screenshot is blank ({colours} colours)")
    os.replace(tmp, screenshot)
    return images, broken, colours


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("page", help="a page of retrieve.py (OUT/index.html)")
    p.add_argument("--screenshot", default=None, help="where the screenshot goes (default: next to the page)")
    a = p.parse_args(argv)
    shot = a.screenshot or os.path.join(os.path.dirname(a.page) or ".", "screenshot.png")
    if a.screenshot and os.path.exists(a.screenshot):  # only the default one, its own, is replaced
        print(f"check_page: error: --screenshot '{a.screenshot}' exists; give a new name", file=sys.stderr)
        raise SystemExit(2)
    images, _, colours = check(a.page, shot)
    print(f"page: ok, {images} images loaded, 0 broken; screenshot {shot} ({colours} colours)")


if __name__ == "__main__":
    main()
