"""``python -m worker demo`` as a user runs it: its own broker, every step's result, in
under a minute once set up (issue: the demo shows a label, an order and a caught re-upload)."""
from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.kafka


def test_the_demo_labels_executes_an_order_and_catches_the_re_upload_in_under_a_minute():
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "worker", "demo", "--timeout", "120"],
                          capture_output=True, text=True, timeout=300)
    wall = time.monotonic() - began
    out = done.stdout
    assert done.returncode == 0, out + done.stderr[-3000:]
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    for name in ("carphone_pristine", "bigbuckbunny", "bikes"):  # the lines it always had
        assert re.search(rf"^  {name} +REVIEW +reasons=no_model_checkpoint", out, re.M), out
    assert "DEAD-LETTER reason=video_not_found" in lines["missing-video"]
    assert "DEAD-LETTER reason=invalid_json" in lines["?"]
    assert "credentials=trusted label=apply:ai_generated (content_credentials)" in lines["ai-credentials"]
    assert re.search(r"^  carphone_pristine +TAKEDOWN +reasons=legal_order .* order=DEMO-HC-2026-1$", out, re.M)
    status = re.search(r"^  order DEMO-HC-2026-1 +DONE +1/1 targets executed ([0-9.]+)s after receipt, "
                       r"deadline 3 h \(within the deadline\)$", out, re.M)
    assert status and float(status[1]) < 60, out
    assert re.search(r"^  reupload +TAKEDOWN +reasons=known_content_match .* "
                     r"entry=order:DEMO-HC-2026-1:carphone_pristine$", out, re.M), out
    assert "9/9 results" in out and "NOT AS EXPECTED" not in out
    assert wall < 60, f"the demo took {wall:.0f} s"
