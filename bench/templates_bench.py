"""Template benchmark: personalise N messages of one round (default 100,000).

``python -m bench.templates_bench [N]``. Customers are spread over 2 languages and 5 time
zones, each with their own name and signed links, as the dispatcher renders them. It
reports the cached path (one Jinja2 render per (kind, form, language, zone), then string
replacement) and, for comparison, a full sandboxed render per message on a sample.
"""

from __future__ import annotations

import sys
import time

from broadcaster.compose.context import Personal
from broadcaster.compose.links import personal_links
from broadcaster.compose.render import Renderer, RenderRequest
from broadcaster.compose.samples import SAMPLE_NOW, sample_facts
from broadcaster.compose.templates import TemplateSet

ZONES = ("Europe/Amsterdam", "Europe/London", "America/New_York", "Asia/Tokyo", "UTC")
LANGUAGES = ("en", "nl")
SECRET = "bench-secret"  # noqa: S105 - a fixed key for a benchmark


def _request(i: int, cache: bool, form: str) -> RenderRequest:
    expires = SAMPLE_NOW
    cid = f"cust-{i:07d}"
    unsubscribe, preferences = personal_links(
        "https://status.example.org", SECRET, cid, expires, SAMPLE_NOW
    )
    personal = Personal(
        name=f"Customer {i}", unsubscribe_url=unsubscribe, preferences_url=preferences
    )
    return RenderRequest(
        kind="update",
        form=form,
        facts=sample_facts("update"),
        language=LANGUAGES[i % 2],
        timezone=ZONES[i % len(ZONES)],
        now=SAMPLE_NOW,
        personal=personal,
        cache_key=1 if cache else None,
    )


def run(n: int, form: str, cache: bool) -> float:
    renderer = Renderer(
        TemplateSet(), organisation="Example Transit", public_url="https://status.example.org"
    )
    started = time.perf_counter()
    for i in range(n):
        renderer.message(_request(i, cache, form), idempotency_key=f"delivery-{i}")
    return time.perf_counter() - started


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    sample = max(n // 20, 1)
    print(f"personalised messages: {n:,} (kind update; 2 languages x 5 time zones)")
    for form in ("email", "sms", "push"):
        cached = run(n, form, cache=True)
        full = run(sample, form, cache=False)
        print(
            f"{form:>5}: cached {cached:6.2f} s ({n / cached:9,.0f}/s)   "
            f"full render {full / sample * 1e6:7.1f} us/message "
            f"(~{full / sample * n:6.1f} s for {n:,})"
        )


if __name__ == "__main__":
    main()
