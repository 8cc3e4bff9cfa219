"""The page's three-party mode (Python 3.11 side): three party processes, one button.

The threshold engine (OpenFHE) runs on Python 3.10 in ``.venv-threeparty``; this module imports
neither it nor the ``threeparty`` package. It drives the party command line
(``python -m threeparty --role ROLE ...``) as three separate OS processes of
``.venv-threeparty/bin/python``, each with its own key folder under the page's keys folder
(``FHE_CLIENT_KEYS_DIR``, passed in), removed when the run ends, and shows their JSON-line progress.

The three-party server (``uvicorn threeparty.server:app`` in .venv-threeparty) is started by the
page (``start_server``) unless THREEPARTY_SERVER_URL names one; THREEPARTY_SERVER_PORT sets the
child's port (default 8001). If the environment or openfhe is missing, the section says why.

``app.py`` calls ``add_translations``, ``build_section`` and ``start_server``: nothing else.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import queue
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import gradio as gr
import httpx

import settings
from page.language import table_units
from page.strings import explanation_text

logger = logging.getLogger(__name__)

TP_PYTHON = settings.REPO_DIR / ".venv-threeparty" / "bin" / "python"
DEFAULT_PORT = 8001
ROLES = ("applicant", "bank", "credit_bureau")
RECIPIENTS = ("applicant", "bank")
MODE = "explain"  # one evaluation gives the verdict (block 0) and the six years-employed bins
SERVER_START_TIMEOUT_SECONDS = 120.0
PARTY_WAIT_SECONDS = 120.0
FLOW_TIMEOUT_SECONDS = 300.0
YES = "yes"  # the employed radio's value for "yes" (app.YES)

_server_url: str | None = None
_server_child: subprocess.Popen[bytes] | None = None

# ---------------------------------------------------------------------------------------------
# Translations (merged into the page's table by app.py; every key in both languages)
# ---------------------------------------------------------------------------------------------
_EN = {
    "tp_title": "## Three-party mode: the verdict decrypts only when all three parties take part",
    "tp_intro": (
        "Here the applicant, the bank and the credit bureau each hold **one share** of a joint "
        "secret key (threshold BFV encryption, OpenFHE). The button runs the three parties as "
        "**three separate OS processes** (`python -m threeparty --role ...`), each with its own "
        "key folder, with the values entered in the party fields above (Step 2). They make the "
        "joint keys in rounds relayed by the three-party server, each encrypts only its own "
        "inputs, the server evaluates the tree on the ciphertexts with public keys only, each "
        "party decrypts partially, and the applicant and the bank fuse the three partial "
        "decryptions. One evaluation also scores the six years-employed bins (explain).\n\n"
        "The parties do not trust the server, nor each other: each signs every upload with its "
        "own identity key and checks the others' signatures against their fingerprints (shown "
        "below); before anyone encrypts an input, the three shares must decrypt a challenge "
        "together, which proves the joint key is built from all three; and before it decrypts, "
        "each party evaluates the tree again itself and refuses if the server's output differs."
    ),
    "tp_unavailable": "The three-party mode is not available on this machine:",
    "tp_missing_env": (
        "the Python 3.10 environment .venv-threeparty is missing (`make run` creates it)."
    ),
    "tp_no_openfhe": "openfhe cannot be imported in .venv-threeparty.",
    "tp_server_down": "the three-party server did not start.",
    "tp_btn_run": "Run the three parties (three separate processes)",
    "tp_label_progress": "What each process did",
    "tp_label_verdict": "Verdict fused by the applicant and the bank",
    "tp_label_explain": "Explanation (same evaluation)",
    "tp_step": "Step",
    "tp_row_joined": "Joined (this party's identity fingerprint, for the others to check)",
    "tp_row_round1": "Key share made (round 1), public part uploaded",
    "tp_row_chain": "Every signature and the key chain checked",
    "tp_row_confirmed": "Joint key confirmed (the three shares decrypt a challenge)",
    "tp_row_uploaded": "Round-2 share and own inputs: committed, then uploaded",
    "tp_row_evaluated": "Server's evaluation on ciphertexts",
    "tp_row_verified": "Evaluated again by this party: same output as the server's",
    "tp_row_partial": "Partial decryption, sealed for",
    "tp_row_verdict": "Verdict",
    "tp_row_traffic": "Traffic (up / down)",
    "tp_waiting": "waiting",
    "tp_no_ciphertext": "no encrypted field (the tree reads none): only its tag",
    "tp_not_recipient": "not a recipient",
    "tp_err_failed": "The {party} process stopped: {detail}",
    "tp_err_party_timeout": "The {party} process waited too long for another party. ({detail})",
    "tp_err_timeout": "The three-party run did not finish within {seconds} s.",
    "tp_holdings": (
        "**What each process holds.** The applicant's process holds the applicant's fields, its "
        "identity key, its key share and the secret key that unseals what is sealed for it (in "
        "its own folder, readable by it alone); the same for the bank and for the credit "
        "bureau. The three-party server holds only public material and signatures: the "
        "parties' verify keys, public keys and evaluation-key shares, the joint evaluation "
        "keys, the parties' ciphertexts, the encrypted verdict, the partial decryptions of the "
        "public challenge, and the partial decryptions of the verdict sealed for their "
        "recipients, which it cannot open. The key folders are deleted when the run ends.\n\n"
        "**What a party would have to steal to read another's data.** Every input is encrypted "
        "under the joint key, and decrypting takes all three key shares: every party downloads "
        "the others' ciphertexts (to evaluate the tree again itself), but to read the credit "
        "bureau's inputs the applicant would have to steal the bank's *and* the credit "
        "bureau's key shares from their folders. One stolen share is not enough, and a party "
        "partially decrypts only the output it computed itself. The bank's account age never "
        "leaves the bank's process: the tree does not test it, so the bank encrypts only a "
        "random tag of its own, which, with the applicant's, authenticates the verdict. The "
        "verdict "
        "goes only to the applicant and the bank: each fuses its own partial decryption with "
        "the two others', which reach it sealed with its sealing public key; the credit bureau "
        "gets none. "
        "The recipients learn the verdict and the six bins' verdicts, which, like any answer, "
        "say something about the inputs. The tree's comparisons are public to the parties.\n\n"
        "**In this demo** the page, which gets all the fields from your browser, starts the "
        "three processes on one machine and hands each only its own fields; in a real "
        "deployment each party runs its own process on its own machine, with its own "
        "invitation, compares the others' fingerprints with them out of band, and no process "
        "sees another party's fields."
    ),
}

_ZH = {
    "tp_title": "## 三方模式：只有三方共同参与，结果才能解密",
    "tp_intro": (
        "在此模式下，申请人、银行和信用中心各自持有联合私钥的**一个份额**（门限BFV加密，OpenFHE）。"
        "按钮会以**三个独立的操作系统进程**（`python -m threeparty --role ...`）运行三方，"
        "每个进程有自己的密钥文件夹，使用上方（步骤2）各方字段中输入的值。三方通过三方服务器转发的"
        "多轮交互生成联合密钥，每一方只加密自己的输入，服务器仅用公开密钥在密文上评估决策树，"
        "每一方进行部分解密，申请人和银行将三份部分解密结果合并。同一次评估还会为六个工作年限区间打分（解释）。\n\n"
        "各方既不信任服务器，也不互相信任：每一方用自己的身份密钥为每次上传签名，"
        "并按下方显示的身份校验码核对其他各方的签名；在任何一方加密输入之前，三个份额必须共同解密一道挑战，"
        "以证明联合密钥确由三个份额构成；在解密之前，每一方都自己重新评估决策树，"
        "若服务器的输出与之不同即拒绝。"
    ),
    "tp_unavailable": "本机无法使用三方模式：",
    "tp_missing_env": "缺少Python 3.10环境 .venv-threeparty（运行 `make run` 即可创建）。",
    "tp_no_openfhe": "无法在 .venv-threeparty 中导入 openfhe。",
    "tp_server_down": "三方服务器未能启动。",
    "tp_btn_run": "运行三方（三个独立进程）",
    "tp_label_progress": "每个进程完成的工作",
    "tp_label_verdict": "申请人和银行合并得到的结果",
    "tp_label_explain": "解释（同一次评估）",
    "tp_step": "步骤",
    "tp_row_joined": "加入会话（本方身份校验码，供各方核对）",
    "tp_row_round1": "生成密钥份额（第1轮），上传公开部分",
    "tp_row_chain": "已核对全部签名和密钥链",
    "tp_row_confirmed": "联合密钥已确认（三个份额共同解密挑战）",
    "tp_row_uploaded": "第2轮份额和自己的输入：先承诺，再上传",
    "tp_row_evaluated": "服务器在密文上评估",
    "tp_row_verified": "本方重新评估：与服务器的输出一致",
    "tp_row_partial": "部分解密，已密封发送给",
    "tp_row_verdict": "结果",
    "tp_row_traffic": "流量（上传/下载）",
    "tp_waiting": "等待中",
    "tp_no_ciphertext": "未加密任何字段（决策树不读取）：只有它的标记",
    "tp_not_recipient": "不是接收方",
    "tp_err_failed": "{party}进程已停止：{detail}",
    "tp_err_party_timeout": "{party}进程等待其他方超时。（{detail}）",
    "tp_err_timeout": "三方运行未在 {seconds} 秒内完成。",
    "tp_holdings": (
        "**每个进程持有什么。** 申请人进程持有申请人的字段、其身份密钥、密钥份额和用于拆封的私钥"
        "（在它自己的文件夹中，仅它可读）；银行和信用中心同理。三方服务器只持有公开材料和签名："
        "各方的验证公钥、公钥和评估密钥份额、联合评估密钥、各方的密文、加密的结果、对公开挑战的部分解密，"
        "以及为接收方密封的结果部分解密——服务器无法打开它们。运行结束后密钥文件夹即被删除。\n\n"
        "**一方要读取另一方的数据必须窃取什么。** "
        "所有输入都用联合公钥加密，解密需要全部三个密钥份额：每一方都会下载其他各方的密文"
        "（以便自己重新评估决策树），但申请人若想读取信用中心的输入，"
        "必须从银行**和**信用中心的文件夹中窃取它们的密钥份额。只窃取一个份额是不够的，"
        "而且每一方只对自己算出的输出进行部分解密。"
        "银行的开户时间从不离开银行的进程：决策树不检验它，所以银行只加密一个自己的随机标记，"
        "它与申请人的标记一起为结果作认证。"
        "结果只发给申请人和银行：每一方把自己的部分解密与另外两方的部分解密合并，"
        "后者用它的密封公钥密封后送达；信用中心得不到结果。接收方会得知结果和六个区间的结果，"
        "与任何答案一样，这些结果会透露一些关于输入的信息。决策树的比较条件对各方公开。\n\n"
        "**在本演示中**，页面从您的浏览器获得全部字段，在同一台机器上启动三个进程，并只把各方自己的字段交给该方；"
        "在真实部署中，每一方在自己的机器上运行自己的进程，使用自己的邀请码，"
        "通过其他渠道与其他各方核对身份校验码，任何进程都看不到其他方的字段。"
    ),
}

TRANSLATIONS = {"en": _EN, "zh": _ZH}


def add_translations(table: dict[str, dict[str, str]]) -> None:
    """Merge this section's texts into the page's translation table (before gr.I18n is made)."""
    for lang, texts in TRANSLATIONS.items():
        table[lang].update(texts)


# ---------------------------------------------------------------------------------------------
# Availability and the server
# ---------------------------------------------------------------------------------------------
def unavailable_reason(python: Path | None = None) -> tuple[str, str] | None:
    """Why the mode cannot run here: (translation key, detail), or None when it can.

    Args:
        python: the engine's interpreter (default ``TP_PYTHON``); checked once per path.
    """
    return _unavailable_reason(python or TP_PYTHON)


@lru_cache(maxsize=4)
def _unavailable_reason(python: Path) -> tuple[str, str] | None:
    if not python.exists():
        return "tp_missing_env", str(python)
    try:
        probe = subprocess.run(
            [str(python), "-c", "import openfhe"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return "tp_no_openfhe", str(error)
    if probe.returncode != 0:
        lines = probe.stderr.strip().splitlines()
        return "tp_no_openfhe", lines[-1] if lines else f"exit code {probe.returncode}"
    return None


def server_url() -> str | None:
    """The three-party server's URL (THREEPARTY_SERVER_URL, or the child this page started)."""
    return os.environ.get("THREEPARTY_SERVER_URL", "").rstrip("/") or _server_url


def start_server(
    preexec: Callable[[], None] | None = None,
    stop: Callable[[subprocess.Popen[bytes]], None] | None = None,
) -> subprocess.Popen[bytes] | None:
    """Start ``uvicorn threeparty.server:app`` unless THREEPARTY_SERVER_URL is set.

    Args:
        preexec: run in the child before exec (Linux: die with the parent).
        stop: registered with atexit to stop the child.

    Returns:
        The child process, or None when there is nothing to start (a URL is given, or the mode
        is unavailable, which the section then says).
    """
    global _server_url, _server_child
    if os.environ.get("THREEPARTY_SERVER_URL") or unavailable_reason() is not None:
        return None
    port = int(os.environ.get("THREEPARTY_SERVER_PORT", str(DEFAULT_PORT)))
    command = [str(TP_PYTHON), "-m", "uvicorn", "threeparty.server:app"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    logger.info("starting the three-party server: %s", " ".join(command))
    child = subprocess.Popen(
        command,
        cwd=settings.REPO_DIR,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        preexec_fn=preexec if sys.platform.startswith("linux") else None,
    )
    _server_url, _server_child = f"http://127.0.0.1:{port}", child
    if stop is not None:
        atexit.register(stop, child)
    return child


def _wait_for_server(url: str, timeout: float = SERVER_START_TIMEOUT_SECONDS) -> bool:
    """Whether /health answers 200 within ``timeout`` (the server runs its self-test first).

    False at once when the child server this page started has exited (e.g. its port was taken,
    or its known-answer self-test failed).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if url == _server_url and _server_child is not None and _server_child.poll() is not None:
            return False
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return True
        time.sleep(0.5)
    return False


# ---------------------------------------------------------------------------------------------
# A run: three processes, their JSON lines
# ---------------------------------------------------------------------------------------------
@dataclass
class FlowState:
    """What the three processes have reported so far."""

    events: dict[str, dict[str, dict[str, Any]]] = field(
        default_factory=lambda: {role: {} for role in ROLES}
    )
    errors: dict[str, tuple[str, str]] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)

    def add(self, role: str, event: dict[str, Any]) -> None:
        """Record one JSON line of a party (an error: its code and message)."""
        if event.get("step") == "error":
            self.errors[role] = (str(event.get("code")), str(event.get("message", "error")))
        self.events[role][str(event.get("step"))] = event


def party_fields(
    applicant_values: Sequence[Any], bank_values: Sequence[Any], bureau_values: Sequence[Any]
) -> dict[str, dict[str, Any]]:
    """Each party's fields from the page's components (see ``build_section`` for the order)."""
    assets, children, household, income, age, *categories = applicant_values
    owned = set(assets or ())
    applicant = {name: name in owned for name in ("own_car", "own_property", "mobile_phone")}
    whole = {"num_children": children, "household_size": household, "age": age}
    applicant.update({k: int(round(v)) if isinstance(v, float) else v for k, v in whole.items()})
    applicant["total_income"] = income
    applicant.update(dict(zip(settings.APPLICANT_FIELDS[7:], categories, strict=True)))
    (account_age,) = bank_values
    employed, years = bureau_values
    bank = {
        "account_age": int(round(account_age)) if isinstance(account_age, float) else account_age
    }
    bureau = {"employed": employed == YES if isinstance(employed, str) else employed}
    bureau["years_employed"] = years
    return {"applicant": applicant, "bank": bank, "credit_bureau": bureau}


def _read_lines(role: str, stream: Any, events: queue.Queue[tuple[str, Any]]) -> None:
    for line in stream:
        with contextlib.suppress(ValueError):
            events.put((role, json.loads(line)))
    events.put((role, None))


def _identity(keys_dir: Path) -> dict[str, str]:
    """A party's identity, made (once) by its own process in its folder: {verify_key, fingerprint}.

    The signing key stays in ``keys_dir``; this process reads only the public part it prints.
    """
    command = [str(TP_PYTHON), "-m", "threeparty", "identity", "--keys", str(keys_dir)]
    done = subprocess.run(
        command,
        cwd=settings.REPO_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    return json.loads(done.stdout.splitlines()[-1])


def _delete_session(url: str, keys_root: Path, session_id: str) -> None:
    """Delete the session with the token the applicant's process chose (best effort)."""
    with contextlib.suppress(httpx.HTTPError, OSError):
        token = (keys_root / "applicant" / f"session-{session_id}" / "token").read_text()
        httpx.delete(
            f"{url}/sessions/{session_id}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10.0,
        )


def run_parties(
    url: str, fields: dict[str, dict[str, Any]], keys_root: Path
) -> Iterator[FlowState]:
    """Create a session, run the three party processes, yield the state after each event.

    Each party's process makes its identity key in its own folder; the session is created for
    the roster of their verify keys, and each party gets the two others' fingerprints (in a real
    deployment, compared out of band). The key folders (``keys_root``/<role>) and the session are
    removed at the end, whatever happens; processes still running then are killed.
    """
    known = {role: _identity(keys_root / role) for role in ROLES}
    roster = {role: known[role]["verify_key"] for role in ROLES}
    created = httpx.post(f"{url}/sessions", json={"mode": MODE, "roster": roster}, timeout=30.0)
    created.raise_for_status()
    invitations = created.json()["invitations"]
    events: queue.Queue[tuple[str, Any]] = queue.Queue()
    processes: dict[str, subprocess.Popen[str]] = {}
    state = FlowState(fingerprints={role: known[role]["fingerprint"] for role in ROLES})
    try:
        for role in ROLES:
            command = [str(TP_PYTHON), "-m", "threeparty", "--role", role, "--server", url]
            command += ["--session", invitations[role], "--keys", str(keys_root / role)]
            command += ["--wait", str(PARTY_WAIT_SECONDS)]
            for other in ROLES:
                if other != role:
                    command += ["--peer", f"{other}={known[other]['fingerprint']}"]
            process = subprocess.Popen(
                command,
                cwd=settings.REPO_DIR,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            processes[role] = process
            assert process.stdin is not None and process.stdout is not None
            process.stdin.write(json.dumps(fields[role]))
            process.stdin.close()
            reader = threading.Thread(
                target=_read_lines, args=(role, process.stdout, events), daemon=True
            )
            reader.start()
        open_streams = set(ROLES)
        deadline = time.monotonic() + FLOW_TIMEOUT_SECONDS
        while open_streams:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            try:
                role, event = events.get(timeout=left)
            except queue.Empty:
                raise TimeoutError from None
            if event is None:
                open_streams.discard(role)
                continue
            state.add(role, event)
            yield state
        for role, process in processes.items():
            if process.wait(timeout=30) != 0 and role not in state.errors:
                state.errors[role] = ("exit", f"exit code {process.returncode}")
        yield state
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
        _delete_session(url, keys_root, created.json()["session_id"])
        shutil.rmtree(keys_root, ignore_errors=True)


def _megabytes(count: int) -> str:
    return f"{count / 1e6:.1f} MB"


def render(
    state: FlowState, lang: str, translate: Callable[..., str], employed: bool = True
) -> tuple[str, str, str]:
    """The progress table, the verdict and the explanation in the page's language.

    Args:
        state: what the processes reported.
        lang: the page's language.
        translate: the page's ``tr``.
        employed: the credit bureau's employed field (the explanation names what changes).
    """

    def cell(role: str, step: str) -> str:
        event = state.events[role].get(step)
        if event is None:
            return "…" if not state.errors else "—"
        if step == "joined":
            return f"`{event['fingerprint']}`"
        if step == "round1":
            return f"{event['seconds']:.2f} s, ↑ {_megabytes(event['uploaded'])}"
        if step in ("chain_verified", "key_confirmed"):
            return "✓"
        if step == "verified":
            return f"✓ {event['seconds']:.2f} s"
        if step == "uploaded":
            sent = f"↑ {_megabytes(event['uploaded'])}"
            if not event.get("own_fields", event["ciphertexts"]):
                return f"{sent}, {translate(lang, 'tp_no_ciphertext')}"
            return sent
        if step == "evaluated":
            return f"{event['evaluation_seconds']:.2f} s"
        if step == "partial_decrypted":
            names = translate(lang, "list_separator").join(
                translate(lang, f"party_{r}") for r in event["sent_to"]
            )
            return f"{names} ({_megabytes(event['partial_bytes'])})"
        return ""

    parties = [translate(lang, f"party_{r}").capitalize() for r in ROLES]
    header = [translate(lang, "tp_step"), *parties]
    rows = [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for step, key in (
        ("joined", "tp_row_joined"),
        ("round1", "tp_row_round1"),
        ("chain_verified", "tp_row_chain"),
        ("key_confirmed", "tp_row_confirmed"),
        ("uploaded", "tp_row_uploaded"),
        ("evaluated", "tp_row_evaluated"),
        ("verified", "tp_row_verified"),
        ("partial_decrypted", "tp_row_partial"),
    ):
        rows.append(
            "| " + " | ".join([translate(lang, key)] + [cell(r, step) for r in ROLES]) + " |"
        )
    verdicts = []
    for role in ROLES:
        event = state.events[role].get("verdict")
        if role not in RECIPIENTS:
            verdicts.append(translate(lang, "tp_not_recipient"))
        elif event is None:
            verdicts.append("…")
        else:
            verdicts.append(
                translate(lang, "verdict_approved" if event["approved"] else "verdict_refused")
            )
    rows.append("| " + " | ".join([translate(lang, "tp_row_verdict"), *verdicts]) + " |")
    traffic = []
    for role in ROLES:
        last = next(reversed(state.events[role].values()), None)
        traffic.append(
            f"↑ {_megabytes(last['bytes_up'])} / ↓ {_megabytes(last['bytes_down'])}"
            if last and "bytes_up" in last
            else "…"
        )
    rows.append("| " + " | ".join([translate(lang, "tp_row_traffic"), *traffic]) + " |")

    verdict = explanation = ""
    fused = [state.events[r].get("verdict") for r in RECIPIENTS]
    if all(fused):
        first = fused[0]
        assert first is not None
        verdict = translate(lang, "verdict_approved" if first["approved"] else "verdict_refused")
        explanation = explanation_text(
            lang,
            approved=bool(first["approved"]),
            years=first.get("fewest_years_employed"),
            employed=employed,
        )
    return table_units("\n".join(rows), lang), verdict, explanation


# ---------------------------------------------------------------------------------------------
# The section
# ---------------------------------------------------------------------------------------------
def build_section(
    i18n: gr.I18n,
    applicant_inputs: Sequence[gr.components.Component],
    bank_inputs: Sequence[gr.components.Component],
    bureau_inputs: Sequence[gr.components.Component],
    language: Callable[[gr.Request | None], str],
    translate: Callable[..., str],
    keys_dir: Path,
    admit: Callable[[gr.Request, bool], None] | None = None,
) -> Any:
    """Add the three-party section to the page being built (inside ``gr.Blocks``).

    Args:
        i18n: the page's gr.I18n.
        applicant_inputs: assets, children, household, income, age, then the five categories.
        bank_inputs: account age.
        bureau_inputs: employed (radio: "yes"/"no"), years employed.
        language: the page's request -> "zh"/"en".
        translate: the page's ``tr(lang, key, **values)``.
        keys_dir: the page's keys folder (the parties' key folders go in it, one per run).
        admit: ``admit(request, checking)`` raises gr.Error to refuse a run (the page's rate
            limit): called in the button's check event (``checking=True``, no outputs, so a
            refusal marks no box), then at the start of the run (``checking=False``).

    Returns:
        The button's check event (the page chains its limits line to it), or None without
        ``admit``.
    """
    gr.Markdown(i18n("tp_title"), elem_id="tp-title")
    gr.Markdown("<hr />")
    gr.Markdown(i18n("tp_intro"))
    reason = unavailable_reason()
    if reason is not None:
        key, detail = reason
        gr.Markdown(i18n("tp_unavailable"), elem_id="tp-unavailable")
        gr.Markdown(i18n(key))
        gr.Markdown(f"`{detail}`")
    button = gr.Button(
        i18n("tp_btn_run"), elem_id="tp-run-button", variant="primary", interactive=reason is None
    )
    progress = gr.Markdown(elem_id="tp-progress", label=i18n("tp_label_progress"))
    verdict = gr.Textbox(
        label=i18n("tp_label_verdict"), max_lines=1, interactive=False, elem_id="tp-verdict"
    )
    explanation = gr.Textbox(
        label=i18n("tp_label_explain"), interactive=False, elem_id="tp-explain"
    )
    gr.Markdown(i18n("tp_holdings"), elem_id="tp-holdings")
    applicant_inputs, bank_inputs = list(applicant_inputs), list(bank_inputs)
    bureau_inputs = list(bureau_inputs)

    def check(request: gr.Request) -> None:
        if admit is not None:
            admit(request, True)

    def run(values: dict[Any, Any], request: gr.Request) -> Iterator[tuple[str, str, str]]:
        if admit is not None:
            admit(request, False)
        lang = language(request)
        problem = unavailable_reason()
        url = server_url()
        if problem is None and (url is None or not _wait_for_server(url)):
            problem = ("tp_server_down", url or "")
        if problem is not None:
            message = f"{translate(lang, 'tp_unavailable')} {translate(lang, problem[0])}"
            raise gr.Error(message, title=translate(lang, "error_title"), print_exception=False)
        assert url is not None
        fields = party_fields(
            [values[c] for c in applicant_inputs],
            [values[c] for c in bank_inputs],
            [values[c] for c in bureau_inputs],
        )
        keys_root = keys_dir / f"threeparty-{secrets.token_hex(8)}"
        state = FlowState()
        try:
            for state in run_parties(url, fields, keys_root):
                yield render(state, lang, translate, fields["credit_bureau"]["employed"])
        except (TimeoutError, httpx.HTTPError) as error:
            logger.warning("three-party run failed: %r", error)
            raise gr.Error(
                translate(lang, "tp_err_timeout", seconds=f"{FLOW_TIMEOUT_SECONDS:g}"),
                title=translate(lang, "error_title"),
                print_exception=False,
            ) from None
        if state.errors:
            role, (code, detail) = next(iter(state.errors.items()))
            key = {"timeout": "tp_err_party_timeout", "invalid_field": "err_invalid_field"}.get(
                code, "tp_err_failed"
            )
            party = translate(lang, f"party_{role}")
            raise gr.Error(
                translate(lang, key, party=party, detail=detail),
                title=translate(lang, "error_title"),
                print_exception=False,
            )

    private: dict[str, Any] = {"api_visibility": "private"}  # only the page calls them
    checked = button.click(check, None, None, show_progress="hidden", **private)
    checked.success(
        run,
        inputs={*applicant_inputs, *bank_inputs, *bureau_inputs},  # a set: run gets a dict
        outputs=[progress, verdict, explanation],
        **private,
    )
    return checked if admit is not None else None
