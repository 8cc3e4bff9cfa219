"""The page under a key-generation flood: another session's step latency, idle and flooded.

``python -m development.bench_page`` starts ``python app.py`` (its own FHE server) on free
loopback ports with the default limits, except one trusted proxy (so that each scripted client
has its own address, as behind Spaces' proxy) and a step quota large enough for the bystander's
many steps. Then, in one run:

1. a bystander session generates its keys and sends the bank's input (Step 2.2: encryption and
   upload) ``IDLE_STEPS`` times on the idle page;
2. an attacker's script attempts ``FLOOD`` key generations, ``FLOOD_THREADS`` at a time, each in
   a new Gradio session (from one address), while the bystander keeps sending the bank's input;
3. the bystander's step latencies (wall time of the whole event, join to completion) are
   reported, median and max, idle and during the flood, with the flood's outcome (accepted,
   refused) and the page's memory (page process and key generation worker) before and after.

Results go to development/bench_page_results.json and are printed as a Markdown table.
"""

from __future__ import annotations

import json
import platform
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from development.page_script import PageScript, RunningApp, running_app

IDLE_STEPS = 20
FLOOD = 20
FLOOD_THREADS = 4
BANK_INPUT = [None, None, 30]  # Step 2.2's inputs: the session's two states, the account age
RESULTS_PATH = Path(__file__).resolve().parent / "bench_page_results.json"
ENV = {"FHE_PAGE_TRUSTED_PROXIES": "1", "FHE_PAGE_STEPS_PER_CLIENT": "100000"}


def _client(page: RunningApp, address: str) -> PageScript:
    return PageScript(page.url, headers={"X-Forwarded-For": address})


def _bank_step(bystander: PageScript, bank: int) -> float:
    start = time.perf_counter()
    result = bystander.run(bank, BANK_INPUT)
    if not result.success:
        raise RuntimeError(f"the bystander's step failed: {result.error}")
    return time.perf_counter() - start


def _attempt_keygen(page: RunningApp) -> str:
    script = _client(page, "198.51.100.66")
    try:
        result = script.click("keygen-button")
    finally:
        script.close()
    return "accepted" if result.success else (result.error or "refused")


def _summary(latencies: list[float]) -> dict[str, float]:
    return {
        "steps": len(latencies),
        "median_s": round(statistics.median(latencies), 3),
        "max_s": round(max(latencies), 3),
    }


def measure(page: RunningApp) -> dict[str, Any]:
    """Run the idle and the flooded phases against a running page; return the figures."""
    bystander = _client(page, "203.0.113.10")
    bank = bystander.queued_event("encrypt-bank-button")["id"]
    if not bystander.click("keygen-button").success:
        raise RuntimeError("the bystander's key generation failed")
    _bank_step(bystander, bank)  # warm-up
    idle = [_bank_step(bystander, bank) for _ in range(IDLE_STEPS)]

    memory_before = page.page_memory()
    flooded: list[float] = []
    done = threading.Event()
    with ThreadPoolExecutor(FLOOD_THREADS) as pool:
        futures = [pool.submit(_attempt_keygen, page) for _ in range(FLOOD)]
        threading.Thread(
            target=lambda: ([f.result() for f in futures], done.set()), daemon=True
        ).start()
        start = time.perf_counter()
        while not done.is_set():
            flooded.append(_bank_step(bystander, bank))
        flood_seconds = time.perf_counter() - start
        outcomes = [future.result() for future in futures]
    memory_after = page.page_memory()
    bystander.close()
    accepted = outcomes.count("accepted")
    return {
        "idle": _summary(idle),
        "during_flood": _summary(flooded),
        "flood": {
            "attempts": FLOOD,
            "threads": FLOOD_THREADS,
            "accepted": accepted,
            "refused": FLOOD - accepted,
            "refusals": sorted(set(o for o in outcomes if o != "accepted")),
            "seconds": round(flood_seconds, 1),
        },
        "page_memory_mb": {
            "before_flood": round(memory_before / 2**20),
            "after_flood": round(memory_after / 2**20),
        },
    }


def main() -> None:
    """Start the page, measure, write and print the results."""
    with tempfile.TemporaryDirectory() as work, running_app(Path(work), ENV) as page:
        figures = measure(page)
    figures["measured"] = time.strftime("%Y-%m-%d")
    figures["machine"] = f"{platform.machine()}, Python {platform.python_version()}"
    RESULTS_PATH.write_text(json.dumps(figures, indent=2, ensure_ascii=False) + "\n")
    idle, flooded, flood = figures["idle"], figures["during_flood"], figures["flood"]
    memory = figures["page_memory_mb"]
    print("| bystander's Step 2.2 (encrypt + upload) | median | max | steps |")
    print("|---|---|---|---|")
    print(f"| idle page | {idle['median_s']} s | {idle['max_s']} s | {idle['steps']} |")
    print(
        f"| during {flood['attempts']} scripted key generations ({flood['threads']} at a time; "
        f"{flood['accepted']} accepted, {flood['refused']} refused) | {flooded['median_s']} s | "
        f"{flooded['max_s']} s | {flooded['steps']} |"
    )
    print(f"page memory: {memory['before_flood']} MB before, {memory['after_flood']} MB after")


if __name__ == "__main__":
    main()
