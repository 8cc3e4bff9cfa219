"""Step 2: the three parties' inputs, each encrypted and sent by its own button.

Editing an input after sending it marks that party "not sent" (``mark_edited``) and clears the
run, until it is sent again; the later steps refuse to run meanwhile.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gradio as gr

import backend
import settings
from page.runtime import page_errors, request_language, tr
from page.sections.base import (
    CLEARED_RUN,
    PRIVATE,
    Parts,
    SectionHandlers,
    output_box,
    step_intro,
    whole,
    wire_step,
)
from page.strings import category_key

INCOME_STEP = 500
ASSET_FIELDS = ("own_car", "own_property", "mobile_phone")
YES, NO = "yes", "no"
# The applicant's five category fields: (field, label key, info key).
APPLICANT_CATEGORIES = (
    ("income_type", "label_income_type", "info_income_type"),
    ("education_type", "label_education", "info_education"),
    ("family_status", "label_family", "info_family"),
    ("occupation_type", "label_occupation", "info_occupation"),
    ("housing_type", "label_housing", "info_housing"),
)


def _send_outputs(stale: Sequence[str], party: str, ciphertext: str) -> tuple[Any, ...]:
    return ([p for p in stale if p != party], ciphertext, *CLEARED_RUN)


class InputsHandlers(SectionHandlers):
    """Step 2's handlers: each party's inputs preprocessed, encrypted and sent."""

    def send_applicant(
        self,
        client: Any,
        stale: list[str],
        assets: list[str] | None,
        num_children: float,
        household_size: float,
        total_income: float,
        age: float,
        income_type: str,
        education_type: str,
        family_status: str,
        occupation_type: str,
        housing_type: str,
        request: gr.Request,
    ) -> tuple[Any, ...]:
        """Step 2.1: preprocess, encrypt and send the applicant's inputs.

        Returns:
            (stale parties, shortened ciphertext, FHE time, encrypted output, verdict,
            explanation).
        """
        lang = request_language(request)
        client = self._live_client(lang, "send", client, stale, request)
        owned = set(assets or ())
        with page_errors(lang, self.runtime):
            ciphertext = backend.pre_process_encrypt_send_applicant(
                client,
                own_car="own_car" in owned,
                own_property="own_property" in owned,
                mobile_phone="mobile_phone" in owned,
                num_children=whole(num_children),
                household_size=whole(household_size),
                total_income=total_income,
                age=whole(age),
                income_type=income_type,
                education_type=education_type,
                family_status=family_status,
                occupation_type=occupation_type,
                housing_type=housing_type,
            )
        return _send_outputs(stale, "applicant", ciphertext)

    def send_bank(
        self, client: Any, stale: list[str], account_age: float, request: gr.Request
    ) -> tuple[Any, ...]:
        """Step 2.2: preprocess, encrypt and send the bank's input (outputs as send_applicant)."""
        lang = request_language(request)
        client = self._live_client(lang, "send", client, stale, request)
        with page_errors(lang, self.runtime):
            ciphertext = backend.pre_process_encrypt_send_bank(
                client, account_age=whole(account_age)
            )
        return _send_outputs(stale, "bank", ciphertext)

    def send_credit_bureau(
        self, client: Any, stale: list[str], employed: str, years_employed: str, request: gr.Request
    ) -> tuple[Any, ...]:
        """Step 2.3: the credit bureau's inputs (outputs as send_applicant)."""
        lang = request_language(request)
        client = self._live_client(lang, "send", client, stale, request)
        with page_errors(lang, self.runtime):
            ciphertext = backend.pre_process_encrypt_send_credit_bureau(
                client,
                employed={YES: True, NO: False}.get(employed, employed),
                years_employed=years_employed,
            )
        return _send_outputs(stale, "credit_bureau", ciphertext)


def mark_edited(party: str, client: Any, stale: list[str], request: gr.Request) -> tuple[Any, ...]:
    """An input of ``party`` changed: if it had been sent, mark it "not sent" and clear the run.

    Returns:
        (stale parties, ciphertext box, FHE time, encrypted output, verdict, explanation), each
        gr.skip() when nothing changes.
    """
    sent = isinstance(client, backend.CreditScoringClient) and party in client.sent_parties
    if not sent or party in stale:
        return (gr.skip(),) * 6
    lang = request_language(request)
    return ([*stale, party], tr(lang, "not_sent"), *CLEARED_RUN)


def mark_applicant_edited(client: Any, stale: list[str], request: gr.Request) -> tuple[Any, ...]:
    """An applicant input changed (see mark_edited)."""
    return mark_edited("applicant", client, stale, request)


def mark_bank_edited(client: Any, stale: list[str], request: gr.Request) -> tuple[Any, ...]:
    """The bank input changed (see mark_edited)."""
    return mark_edited("bank", client, stale, request)


def mark_credit_bureau_edited(
    client: Any, stale: list[str], request: gr.Request
) -> tuple[Any, ...]:
    """A credit-bureau input changed (see mark_edited)."""
    return mark_edited("credit_bureau", client, stale, request)


def _category_choices(i18n: gr.I18n, field: str) -> list[tuple[Any, str]]:
    return [(i18n(category_key(field, v)), v) for v in settings.CATEGORY_VALUES[field]]


def _field_slider(i18n: gr.I18n, field: str, text: str, step: float = 1) -> gr.Slider:
    """A slider over a field's range in the data, at its median (label_/info_<text>)."""
    ranges = settings.field_ranges()
    return gr.Slider(
        minimum=ranges[field]["minimum"],
        maximum=ranges[field]["maximum"],
        value=ranges[field]["value"],
        step=step,
        label=i18n(f"label_{text}"),
        info=i18n(f"info_{text}"),
        elem_id=field.replace("_", "-"),
    )


def _send_controls(parts: Parts, party: str) -> None:
    """A party's "encrypt and send" button and the box showing its shortened ciphertext."""
    slug = party.replace("_", "-")
    i18n = parts.i18n
    with gr.Row(), gr.Column(scale=2):
        button = gr.Button(i18n("btn_encrypt_send"), elem_id=f"encrypt-{slug}-button")
        box = output_box(i18n, "label_encrypted_input", f"encrypted-{slug}")
    parts.add(**{f"encrypt_{party}_button": button, f"encrypted_{party}": box})


def layout(parts: Parts) -> None:
    """Add Step 2: the applicant's, the bank's and the credit bureau's inputs and buttons.

    ``parts`` gets each component, and the lists ``applicant_inputs`` (assets, children,
    household, income, age, then the five categories), ``bank_inputs`` and ``bureau_inputs``.
    """
    i18n = parts.i18n
    step_intro(i18n, 2, "step2_who", "step2_body")
    with gr.Row():
        with gr.Column():
            gr.Markdown(i18n("step21_title"))
            applicant = [
                gr.CheckboxGroup(
                    [(i18n(f"asset_{field}"), field) for field in ASSET_FIELDS],
                    label=i18n("label_assets"),
                    elem_id="assets",
                ),
                _field_slider(i18n, "num_children", "children"),
                _field_slider(i18n, "household_size", "household"),
                _field_slider(i18n, "total_income", "income", step=INCOME_STEP),
                _field_slider(i18n, "age", "age"),
            ]
        with gr.Column():
            for field, label, info in APPLICANT_CATEGORIES:
                applicant.append(
                    gr.Dropdown(
                        choices=_category_choices(i18n, field),
                        value=settings.CATEGORY_VALUES[field][0],
                        label=i18n(label),
                        info=i18n(info),
                        elem_id=field.replace("_", "-"),
                    )
                )
    _send_controls(parts, "applicant")
    gr.Markdown("<hr />")
    with gr.Column():
        gr.Markdown(i18n("step22_title"))
        account_age = _field_slider(i18n, "account_age", "account_age")
    _send_controls(parts, "bank")
    gr.Markdown("<hr />")
    with gr.Column():
        gr.Markdown(i18n("step23_title"))
        employed = gr.Radio(
            [(i18n("choice_yes"), YES), (i18n("choice_no"), NO)],
            value=YES,
            label=i18n("label_employed"),
            elem_id="employed",
        )
        years_employed = gr.Dropdown(
            choices=_category_choices(i18n, "years_employed"),
            value=settings.YEARS_EMPLOYED_BINS[0],
            label=i18n("label_years_employed"),
            info=i18n("info_years_employed"),
            elem_id="years-employed",
        )
    _send_controls(parts, "credit_bureau")
    parts.add(
        applicant_inputs=applicant,
        bank_inputs=[account_age],
        bureau_inputs=[employed, years_employed],
        employed=employed,
    )


def wire(parts: Parts, steps: InputsHandlers) -> None:
    """Step 2's events: each party's button, and each input's edit."""
    run_outputs = parts.run_outputs()
    for party, handler, inputs in (
        ("applicant", steps.send_applicant, parts["applicant_inputs"]),
        ("bank", steps.send_bank, parts["bank_inputs"]),
        ("credit_bureau", steps.send_credit_bureau, parts["bureau_inputs"]),
    ):
        box = parts[f"encrypted_{party}"]
        outputs = [parts["stale_state"], box, *run_outputs]
        wire_step(parts, steps, parts[f"encrypt_{party}_button"], "send", handler, inputs, outputs)
        # Editing an input after sending it: that party is "not sent" until sent again.
        edited = {
            "applicant": mark_applicant_edited,
            "bank": mark_bank_edited,
            "credit_bureau": mark_credit_bureau_edited,
        }[party]
        for component in inputs:
            component.change(
                edited,
                inputs=[parts["client_state"], parts["stale_state"]],
                outputs=outputs,
                show_progress="hidden",
                **PRIVATE,
                queue=False,
            )
